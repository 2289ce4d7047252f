// 2-D convolutions for XLA:CPU through oneDNN, as XLA FFI handlers (see onednn_conv.py).
//
// Three handlers cover a convolution and its transpose: forward (src -> dst), backward data
// (dst cotangent -> src cotangent, which is also the transposed convolution's forward) and
// backward weights. Layouts are JAX's: NHWC activations and HWIO weights, float32, symmetric
// stride and padding. oneDNN picks its own blocked weight layout ("any"); the HWIO weights are
// reordered into it on each call (they are small beside the activations).
//
// Thread safety: XLA may run two of these at once, so every call gets its own stream, reordered
// weights and scratchpad; only the primitive descriptors and primitives are cached and shared
// (oneDNN primitives may execute concurrently).

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

// oneDNN 3.0 removed the operation descriptors (`convolution_forward::desc`) used below.
#if DNNL_VERSION_MAJOR != 2
#error "onednn_conv.cc is written for oneDNN 2.x (Debian 12's libdnnl-dev 2.6)"
#endif

namespace ffi = xla::ffi;
using dnnl::memory;
using Tag = memory::format_tag;

namespace {

enum class Kind { kForward, kBackwardData, kBackwardWeights };

// N, H, W, IC (the convolution's source), OC, KH, KW, stride, pad.
using Shape = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                         int64_t>;

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

struct Descs {
  memory::desc src, weights_user, weights_any, bias, dst;
  memory::dims strides, padding;
};

Descs MakeDescs(const Shape& s) {
  auto [n, h, w, ic, oc, kh, kw, stride, pad] = s;
  const int64_t oh = (h + 2 * pad - kh) / stride + 1, ow = (w + 2 * pad - kw) / stride + 1;
  const auto f32 = memory::data_type::f32;
  return {memory::desc({n, ic, h, w}, f32, Tag::nhwc),
          memory::desc({oc, ic, kh, kw}, f32, Tag::hwio),
          memory::desc({oc, ic, kh, kw}, f32, Tag::any),
          memory::desc({oc}, f32, Tag::x),
          memory::desc({n, oc, oh, ow}, f32, Tag::nhwc),
          {stride, stride},
          {pad, pad}};
}

dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

dnnl::convolution_forward::primitive_desc ForwardDesc(const Descs& d) {
  auto desc = dnnl::convolution_forward::desc(
      dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, d.src,
      d.weights_any, d.dst, d.strides, d.padding, d.padding);
  return {desc, UserScratchpad(), Engine()};
}

// A cached primitive with the layout its weights (or weight gradient) take.
struct Cached {
  dnnl::primitive primitive;
  memory::desc weights;
  memory::desc scratchpad;
  Descs descs;
};

Cached Create(Kind kind, const Shape& shape) {
  const Descs d = MakeDescs(shape);
  auto hint = ForwardDesc(d);
  switch (kind) {
    case Kind::kForward:
      return {dnnl::convolution_forward(hint), hint.weights_desc(), hint.scratchpad_desc(), d};
    case Kind::kBackwardData: {
      auto desc = dnnl::convolution_backward_data::desc(
          dnnl::algorithm::convolution_direct, d.src, d.weights_any, d.dst, d.strides,
          d.padding, d.padding);
      dnnl::convolution_backward_data::primitive_desc pd(desc, UserScratchpad(), Engine(), hint);
      return {dnnl::convolution_backward_data(pd), pd.weights_desc(), pd.scratchpad_desc(), d};
    }
    case Kind::kBackwardWeights: {
      auto desc = dnnl::convolution_backward_weights::desc(
          dnnl::algorithm::convolution_direct, d.src, d.weights_any, d.dst, d.strides,
          d.padding, d.padding);
      dnnl::convolution_backward_weights::primitive_desc pd(desc, UserScratchpad(), Engine(),
                                                            hint);
      return {dnnl::convolution_backward_weights(pd), pd.diff_weights_desc(),
              pd.scratchpad_desc(), d};
    }
  }
  throw std::logic_error("unknown convolution kind");
}

const Cached& Lookup(Kind kind, const Shape& shape) {
  static std::mutex mutex;
  static std::map<std::pair<Kind, Shape>, std::unique_ptr<Cached>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto& entry = cache[{kind, shape}];
  if (!entry) entry = std::make_unique<Cached>(Create(kind, shape));
  return *entry;
}

// The check every handler makes: rank-4 NHWC activations and HWIO weights that fit together.
ffi::Error CheckShapes(ffi::Span<const int64_t> src, ffi::Span<const int64_t> weights,
                       ffi::Span<const int64_t> dst, int64_t stride, int64_t pad) {
  if (src.size() != 4 || weights.size() != 4 || dst.size() != 4)
    return ffi::Error::InvalidArgument("onednn conv: NHWC activations and HWIO weights");
  if (stride < 1 || pad < 0) return ffi::Error::InvalidArgument("onednn conv: stride >= 1, pad >= 0");
  const int64_t oh = (src[1] + 2 * pad - weights[0]) / stride + 1;
  const int64_t ow = (src[2] + 2 * pad - weights[1]) / stride + 1;
  if (src[3] != weights[2] || dst[3] != weights[3] || dst[0] != src[0] || dst[1] != oh ||
      dst[2] != ow)
    return ffi::Error::InvalidArgument("onednn conv: shapes do not fit together");
  return ffi::Error::Success();
}

Shape MakeShape(ffi::Span<const int64_t> src, ffi::Span<const int64_t> weights, int64_t stride,
                int64_t pad) {
  return {src[0], src[1], src[2], src[3], weights[3], weights[0], weights[1], stride, pad};
}

// Runs one cached primitive. `weights_user` is the HWIO buffer (input for forward and backward
// data, output for backward weights).
ffi::Error Run(Kind kind, const Shape& shape, void* src, void* weights_user, void* dst) {
  try {
    const Cached& c = Lookup(kind, shape);
    const Descs& d = c.descs;
    dnnl::engine& engine = Engine();
    dnnl::stream stream(engine);
    memory src_m(d.src, engine, src), dst_m(d.dst, engine, dst);
    memory user_w(d.weights_user, engine, weights_user);
    memory scratch(c.scratchpad, engine);
    const bool reorder = c.weights != d.weights_user;
    memory w = reorder ? memory(c.weights, engine) : user_w;
    if (kind != Kind::kBackwardWeights && reorder)
      dnnl::reorder(user_w, w).execute(stream, user_w, w);
    switch (kind) {
      case Kind::kForward:
        c.primitive.execute(stream, {{DNNL_ARG_SRC, src_m}, {DNNL_ARG_WEIGHTS, w},
                                     {DNNL_ARG_DST, dst_m}, {DNNL_ARG_SCRATCHPAD, scratch}});
        break;
      case Kind::kBackwardData:
        c.primitive.execute(stream, {{DNNL_ARG_DIFF_DST, dst_m}, {DNNL_ARG_WEIGHTS, w},
                                     {DNNL_ARG_DIFF_SRC, src_m}, {DNNL_ARG_SCRATCHPAD, scratch}});
        break;
      case Kind::kBackwardWeights:
        c.primitive.execute(stream, {{DNNL_ARG_SRC, src_m}, {DNNL_ARG_DIFF_DST, dst_m},
                                     {DNNL_ARG_DIFF_WEIGHTS, w}, {DNNL_ARG_SCRATCHPAD, scratch}});
        if (reorder) dnnl::reorder(w, user_w).execute(stream, w, user_w);
        break;
    }
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN: ") + e.what());
  } catch (const std::exception& e) {
    return ffi::Error::Internal(e.what());
  } catch (...) {  // nothing may unwind into XLA
    return ffi::Error::Internal("oneDNN convolution: unknown exception");
  }
  return ffi::Error::Success();
}

// The three handlers share one signature, two float32 operands and one result; which of them is
// the convolution's source, weights and destination depends on the kind.
template <Kind kind>
ffi::Error Handle(ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                  ffi::ResultBuffer<ffi::F32> result, int64_t stride, int64_t pad) {
  ffi::Buffer<ffi::F32>& out = *result;
  ffi::Buffer<ffi::F32>& src = kind == Kind::kBackwardData ? out : a;
  ffi::Buffer<ffi::F32>& weights = kind == Kind::kBackwardWeights ? out : b;
  ffi::Buffer<ffi::F32>& dst = kind == Kind::kForward ? out : kind == Kind::kBackwardData ? a : b;
  if (auto e = CheckShapes(src.dimensions(), weights.dimensions(), dst.dimensions(), stride, pad);
      e.failure())
    return e;
  return Run(kind, MakeShape(src.dimensions(), weights.dimensions(), stride, pad),
             src.untyped_data(), weights.untyped_data(), dst.untyped_data());
}

auto Binding() {
  return ffi::Ffi::Bind()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Ret<ffi::Buffer<ffi::F32>>()
      .Attr<int64_t>("stride")
      .Attr<int64_t>("pad");
}

}  // namespace

// Operands: forward (src, weights) -> dst; backward data (dst gradient, weights) -> src
// gradient; backward weights (src, dst gradient) -> weights gradient.
XLA_FFI_DEFINE_HANDLER_SYMBOL(SslmOnednnConvForward, Handle<Kind::kForward>, Binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(SslmOnednnConvBackwardData, Handle<Kind::kBackwardData>, Binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(SslmOnednnConvBackwardWeights, Handle<Kind::kBackwardWeights>,
                              Binding());
