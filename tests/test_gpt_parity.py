"""Parity of the JAX GPT with the PyTorch reference GPT (benchmarks/pytorch_reference/gpt.py).

Same weights (PyTorch's random init, converted) must give the same logits, the same causal-LM
loss (the library's `lm_loss` through `bind_loss`), the same parameter gradients and the same
AdamW + global-norm clipping update of the library's optimizer, to a relative error
||jax - torch|| / ||torch|| below 1e-5 per tensor in float32, for learned and rotary positions
and tied and untied output layers. Float32 means full float32 matmuls on both sides, on every
backend (JAX at 'highest' precision and PyTorch without TF32: tests/conftest.py). Skipped where
torch is not installed (`pip install -e .[torch]`).
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip(
    'torch', reason='PyTorch parity tests need torch (pip install -e .[torch]); skipped without')

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.pytorch_reference import gpt as torch_gpt  # noqa: E402
from conftest import (FLOAT32_MATMUL_PRECISION, assert_negligible_gradient,  # noqa: E402
                      float32_torch, is_zero_gradient_key, rel_err)
from sslm_jax.runs import run_config  # noqa: E402
from sslm_jax.interop import flax_gpt_params_to_torch, torch_gpt_state_dict_to_flax  # noqa: E402
from sslm_jax.models import GPT  # noqa: E402
from sslm_jax.objectives import bind_loss  # noqa: E402
from sslm_jax.objectives.lm import Vocab  # noqa: E402
from sslm_jax.train import optim  # noqa: E402

float32_torch(torch)
assert jax.config.jax_default_matmul_precision == FLOAT32_MATMUL_PRECISION
RTOL = 1e-5
BATCH, LENGTH = 3, 10
TINY = dict(vocab_size=37, num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32, max_len=12)
VOCAB = Vocab(size=37, pad_id=0, bos_id=1, eos_id=2, mask_id=3, first_normal_id=4)
VARIANTS = [('learned', True), ('rotary', False)]  # (positions, tied output layer)


def assert_close(name_to_pair: dict, what: str, rtol: float = RTOL):
  errors = {k: rel_err(a, b) for k, (a, b) in name_to_pair.items()}
  worst = max(errors, key=errors.get)
  print(f'\n{what}: max relative error {errors[worst]:.2e} ({worst})')
  bad = {k: v for k, v in errors.items() if not v < rtol}
  assert not bad, f'{what}: relative error >= {rtol}: {bad}'


def zero_gradient_keys(positions: str, keys) -> set[str]:
  """Parameters whose exact gradient is zero (`conftest.is_zero_gradient_key`): both frameworks
  return rounding noise there (and Adam turns it into full-size steps), so those are checked to
  be negligible instead of equal."""
  return {k for k in keys if is_zero_gradient_key(k, positions)}


def assert_negligible(grads: dict, keys: set[str], scale: float, what: str):
  for k in keys:
    assert_negligible_gradient(grads[k], scale, f'{what}: {k}')


def setup(positions='learned', tie=True, attention='sdpa', seed=0):
  """(torch GPT with its random init, the JAX GPT, its params converted, tokens (B, L + 1))."""
  torch.manual_seed(seed)
  torch.set_num_threads(1)
  fields = dict(TINY, positions=positions, tie_embeddings=tie)
  tmodel = torch_gpt.GPT(**fields, attention=attention)
  # PyTorch zero-initializes biases and sets LayerNorms to 1/0: randomize them so the test sees
  # every parameter's layout.
  with torch.no_grad():
    for name, p in tmodel.named_parameters():
      if name.endswith('bias') or 'norm' in name:
        p.add_(0.1 * torch.randn_like(p))
  jmodel = GPT(**fields)
  params = jax.tree.map(jnp.asarray, torch_gpt_state_dict_to_flax(tmodel.state_dict(),
                                                                  TINY['num_heads']))
  tokens = np.random.default_rng(seed).integers(0, TINY['vocab_size'], (BATCH, LENGTH + 1))
  return tmodel, jmodel, params, tokens.astype(np.int32)


def causal_lm_objective():
  return run_config('gpt', 'causal_lm').objective


@pytest.mark.parametrize('positions,tie', VARIANTS)
def test_round_trips_are_exact(positions, tie):
  tmodel, jmodel, params, tokens = setup(positions, tie)
  state = {k: v.numpy() for k, v in tmodel.state_dict().items()}
  back = flax_gpt_params_to_torch(params)
  assert set(back) == set(state)
  for k in state:
    np.testing.assert_array_equal(back[k], state[k], err_msg=k)
  # The converted tree is exactly the tree the Flax model initializes, shape for shape (traced
  # only: compiling the init is slower than the rest of this test), and back again exactly.
  init = jax.eval_shape(jmodel.init, jax.random.key(0), jnp.asarray(tokens[:, :-1]))['params']
  assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, init)
  rng = np.random.default_rng(1)
  fake = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), init)
  again = torch_gpt_state_dict_to_flax(flax_gpt_params_to_torch(fake), TINY['num_heads'])
  jax.tree.map(np.testing.assert_array_equal, again, fake)


def test_conversion_errors():
  with pytest.raises(ValueError, match='not the params of a GPT'):
    flax_gpt_params_to_torch({'encoder': {}})
  tmodel, _, _, _ = setup()
  state = dict(tmodel.state_dict(), extra=torch.zeros(1))
  with pytest.raises(ValueError, match='unexpected state_dict keys'):
    torch_gpt_state_dict_to_flax(state, TINY['num_heads'])


_JAX_CASES, _CASES = {}, {}


def jax_case(positions, tie, params, tokens):
  """The JAX logits, loss and gradients (cached: both torch attentions share them)."""
  if (positions, tie) not in _JAX_CASES:
    jmodel = GPT(**TINY, positions=positions, tie_embeddings=tie)
    loss_fn = bind_loss(jmodel, causal_lm_objective(), vocab=VOCAB)
    batch = {'tokens': jnp.asarray(tokens)}
    (loss, _), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
        params, batch, jax.random.key(0))
    logits = jax.jit(jmodel.apply)({'params': params}, batch['tokens'][:, :-1])
    _JAX_CASES[positions, tie] = {'logits': logits, 'loss': loss, 'grads_tree': grads,
                                  'grads': flax_gpt_params_to_torch(grads)}
  return _JAX_CASES[positions, tie]


def gradient_case(positions, tie, attention):
  """Forward, loss and gradients of both frameworks on the same weights (cached per variant)."""
  key = (positions, tie, attention)
  if key not in _CASES:
    tmodel, _, params, tokens = setup(positions, tie, attention)
    t_tokens = torch.from_numpy(tokens).long()
    logits = tmodel(t_tokens[:, :-1])
    loss = torch_gpt.causal_lm_loss(logits, t_tokens[:, 1:])
    loss.backward()
    _CASES[key] = {
        'tmodel': tmodel, 'params': params,
        'torch': {'logits': logits.detach().numpy(), 'loss': loss.item(),
                  'grads': {k: p.grad.numpy().copy() for k, p in tmodel.named_parameters()}},
        'jax': jax_case(positions, tie, params, tokens)}
  return _CASES[key]


# The written-out attention of the reference checks its fused (sdpa) path, on every variant.
@pytest.mark.parametrize('attention', torch_gpt.ATTENTION)
@pytest.mark.parametrize('positions,tie', VARIANTS)
def test_logits_loss_and_gradients_match(positions, tie, attention):
  tag = f'[{positions}, {"tied" if tie else "untied"}, torch {attention}]'
  case = gradient_case(positions, tie, attention)
  tout, jout = case['torch'], case['jax']
  assert_close({k: (jout[k], tout[k]) for k in ('logits', 'loss')}, f'{tag} logits and loss')
  torch_grads, jax_grads = tout['grads'], jout['grads']
  assert set(jax_grads) == set(torch_grads)
  zero = zero_gradient_keys(positions, torch_grads)
  scale = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in torch_grads.values()))
  assert_negligible(torch_grads, zero, scale, f'{tag} torch')
  assert_negligible(jax_grads, zero, scale, f'{tag} jax')
  assert_close({k: (jax_grads[k], torch_grads[k]) for k in torch_grads if k not in zero},
               f'{tag} gradients ({len(torch_grads) - len(zero)} tensors)')


def test_one_adamw_step_with_clipping_matches():
  """The library's optimizer (optax AdamW after global-norm clipping, as configs/gpt_fortunes.py)
  on the JAX gradients against torch.optim.AdamW after clip_grad_norm_ on PyTorch's."""
  case = gradient_case('learned', True, 'sdpa')
  tmodel, params, grads = case['tmodel'], case['params'], case['jax']['grads_tree']
  opt_config = run_config().optimizer
  opt_config.name, opt_config.b2, opt_config.weight_decay = 'adamw', 0.99, 0.1
  opt_config.grad_clip_norm = 0.5  # below the gradient norm, so clipping acts
  tx = optim.make_optimizer(opt_config, total_steps=10)

  @jax.jit
  def update(params, grads):
    updates, _ = tx.update(grads, tx.init(params), params)
    return optax.apply_updates(params, updates), optax.tree.norm(grads)
  new_params, jnorm = update(params, grads)

  opt = torch.optim.AdamW(tmodel.parameters(), lr=opt_config.learning_rate,
                          betas=(opt_config.b1, opt_config.b2),
                          weight_decay=opt_config.weight_decay)
  norm = torch.nn.utils.clip_grad_norm_(tmodel.parameters(), opt_config.grad_clip_norm)
  assert norm > opt_config.grad_clip_norm
  opt.step()

  after = {k: v.numpy() for k, v in tmodel.state_dict().items()}
  jax_after = flax_gpt_params_to_torch(new_params)
  assert_close({'grad_norm': (jnorm, norm)}, 'global gradient norm')
  zero = zero_gradient_keys('learned', after)
  assert_close({k: (jax_after[k], after[k]) for k in after if k not in zero},
               f'weights after AdamW ({len(after) - len(zero)} tensors; not the key biases)')
