# Two entry points (README): `make demo` and `make test`. Everything else is a helper target.
PYTHON ?= python3
VENV   ?= .venv
PIP     = $(VENV)/bin/pip
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FASHION_MNIST = /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
# tcmalloc: `sslm-jax` reruns itself under it (sslm_jax/host_memory.py); optional everywhere.
TCMALLOC_GLOB = /usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4
TCMALLOC = $(wildcard $(TCMALLOC_GLOB))
APT_INSTALL = $(SUDO) apt-get update -qq && \
  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq
# torch is only for the PyTorch reference (benchmarks/, parity tests). 2.13.0 is the CPU build
# cached on the project's machines; elsewhere pip fetches it from PyPI.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test system-deps test-deps install install-test clean

demo: system-deps install
	$(VENV)/bin/sslm-jax train --config configs/demo.py --workdir runs/demo
	@echo "run folder: runs/demo (summary.json, metrics.jsonl, reconstructions.png, samples.png, checkpoints/, tensorboard/)"

test: test-deps install-test
	LD_PRELOAD=$$(ls $(TCMALLOC_GLOB) 2>/dev/null | head -n 1) $(VENV)/bin/python -m pytest -q

# Debian/Ubuntu packages: the real Fashion-MNIST files, venv support for python3, tcmalloc.
system-deps:
	@if [ ! -f $(FASHION_MNIST) ] || [ -z "$(TCMALLOC)" ] || \
	    ! $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null; then \
	  $(APT_INSTALL) dataset-fashion-mnist python3-venv libtcmalloc-minimal4; \
	fi

# The suite needs no system package; with tcmalloc it runs as `sslm-jax` does, and its allocator
# test runs instead of skipping.
test-deps:
	@if [ -z "$(TCMALLOC)" ] && command -v apt-get >/dev/null; then \
	  ($(APT_INSTALL) libtcmalloc-minimal4 </dev/null) || echo "tcmalloc not installed: its test is skipped"; \
	fi

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
	rm -rf $(VENV) runs data .pytest_cache
