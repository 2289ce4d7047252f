# Two entry points (README): `make demo` and `make test`. Everything else is a helper target.
PYTHON ?= python3
VENV   ?= .venv
PIP     = $(VENV)/bin/pip
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
SUDO_N := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)
FASHION_MNIST = /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
# tcmalloc: `sslm-jax` reruns itself under it (sslm_jax/host_memory.py); optional everywhere,
# so installing it is best effort. This interpreter's architecture, not any multiarch copy.
MULTIARCH := $(shell $(PYTHON) -c "import sysconfig; print(sysconfig.get_config_var('MULTIARCH') or '')" 2>/dev/null)
TCMALLOC_LIB = /usr/lib/$(MULTIARCH)/libtcmalloc_minimal.so.4
# $(call APT_INSTALL,sudo command): apt-get update, then install the packages that follow.
APT_INSTALL = $(1) apt-get update -qq && $(1) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq
# torch is only for the PyTorch reference (benchmarks/, parity tests). 2.13.0 is the CPU build
# cached on the project's machines; elsewhere pip fetches it from PyPI.
TORCH_SPEC ?= torch==2.13.0
# The suite mostly compiles small programs, and XLA compiles one on one core: two pytest workers
# (whole files each, so a file's fixtures are built once) keep two cores busy. 0 runs it serially.
# The log opens with the CPU and closes with the ten slowest tests: where the time went, and on what.
TEST_WORKERS ?= 2

ONEDNN_KERNELS = sslm_jax/kernels/_onednn_conv.so

.PHONY: demo test system-deps tcmalloc kernels install install-test clean

demo: system-deps tcmalloc install
	@$(MAKE) --no-print-directory kernels
	$(VENV)/bin/sslm-jax train --config configs/demo.py --workdir runs/demo
	@echo "run folder: runs/demo (summary.json, metrics.jsonl, reconstructions.png, samples.png, checkpoints/, tensorboard/)"

test: tcmalloc install-test
	@$(MAKE) --no-print-directory kernels
	LD_PRELOAD=$$([ -f $(TCMALLOC_LIB) ] && echo $(TCMALLOC_LIB)) $(VENV)/bin/python -m pytest \
	  -n $(TEST_WORKERS) --dist loadfile --durations=10

# Debian/Ubuntu packages: the real Fashion-MNIST files, and venv support for python3.
system-deps:
	@if [ ! -f $(FASHION_MNIST) ] || ! $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null; then \
	  $(call APT_INSTALL,$(SUDO)) dataset-fashion-mnist python3-venv; \
	fi

# Best effort, never waiting for a password: nothing needs it (without it the suite's allocator
# tests skip and everything runs under the system malloc).
tcmalloc:
	@if [ ! -f $(TCMALLOC_LIB) ] && command -v apt-get >/dev/null; then \
	  ($(call APT_INSTALL,$(SUDO_N)) libtcmalloc-minimal4 </dev/null >/dev/null) || \
	    echo "libtcmalloc-minimal4 not installed: sslm-jax and the tests use the system malloc"; \
	fi

# oneDNN convolutions for XLA:CPU (sslm_jax/kernels/onednn_conv.py), the VAE's default where
# built. Optional like tcmalloc, so best effort: without them the convolutions are XLA's own.
# `make demo` and `make test` run it after installing (so never beside pip or apt under -j).
kernels: $(ONEDNN_KERNELS)
$(ONEDNN_KERNELS): sslm_jax/kernels/onednn_conv.cc
	@rm -f $@
	@if { [ ! -f /usr/include/oneapi/dnnl/dnnl.hpp ] || ! command -v g++ >/dev/null; } && \
	    command -v apt-get >/dev/null; then \
	  ($(call APT_INSTALL,$(SUDO_N)) g++ libdnnl-dev </dev/null >/dev/null) || true; \
	fi
	@$(VENV)/bin/python -m sslm_jax.kernels.onednn_conv >/dev/null || \
	  echo "oneDNN kernels not built: convolutions use XLA's own (slower on CPU)"

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q -e '.[test]'
	$(PIP) install -q '$(TORCH_SPEC)' || echo "torch not installed: parity tests will be skipped"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

clean:
	rm -rf $(VENV) runs data .pytest_cache $(ONEDNN_KERNELS)
