# The two commands a user needs: `make repro` and `make test`. Both set the machine up first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: setup data repro quick test lint bench reliability clean-checkpoints

# glibc returns every large tensor buffer to the kernel and gets it back zeroed on the next
# step (most of a 2-core training step was system time); keeping freed memory in the heap made
# training ~20% faster here. Only performance changes, never results.
export MALLOC_MMAP_THRESHOLD_ ?= 10000000000
export MALLOC_TRIM_THRESHOLD_ ?= 10000000000

setup: $(STAMP) data

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	@# uv fetches and unpacks the 5.6 GB of packages (torch's CUDA build with its libraries) on
	@# every core: 26 s here from an empty cache, where pip took 59 s; --system-certs trusts what
	@# the system trusts (a proxy that re-signs TLS, say). Where uv cannot be installed or cannot
	@# reach its index (PyPI), pip installs them as the machine configures it.
	($(PY) -m pip install -q "uv>=0.13,<0.14" && $(VENV)/bin/uv pip install -q --system-certs --python $(PY) -e ".[test,onnx]") || \
	  ($(PY) -m pip install -q --upgrade pip >/dev/null && $(PY) -m pip install -q --no-compile -e ".[test,onnx]")
	@# Bytecode for the installed files, compiled once on every core (pip's own compiling uses one:
	@# half its set-up time on two). The packages' own test suites (a quarter of the files) are
	@# never imported; torch's Python 3.12-only test helper does not compile on 3.11.
	$(PY) -m compileall -q -j 0 -x 'py312_intrinsics|/tests/' $$($(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") >/dev/null
	$(PY) -c "import torch, torchvision, mtkahypar, dvc, dvc_s3, onnx, onnxruntime; print('set-up ok: torch', torch.__version__, 'torchvision', torchvision.__version__)"
	touch $@

# The embedded default dataset comes from Debian's package; without it, the prepare stage
# falls back to torchvision's checked download and says so when neither works.
data:
	@if [ ! -d $(FMNIST) ]; then \
	  ($(SUDO) apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	   ($(SUDO) apt-get update -qq >/dev/null 2>&1 && $(SUDO) apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1)) \
	  && echo "installed dataset-fashion-mnist" \
	  || echo "note: could not install dataset-fashion-mnist; prepare will try torchvision's download"; \
	fi

# dvc repro, printing "stage k of N" and the time left as it goes
repro: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" structlth repro

# the whole pipeline on a small subset (configs/quick.yaml) in a scratch repo, .quick/
quick: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" structlth quick

test: setup lint
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check structlth stages tests benchmarks
	$(VENV)/bin/ruff format --check structlth stages tests benchmarks

# Every benchmark at full size on the workspace's run (after `make repro`) -> reports/benchmarks/;
# `make bench BENCH="--smoke"` runs each at a tiny size into a temporary folder (minutes).
bench: setup
	$(PY) -m benchmarks $(BENCH)

# The table of bad params files and broken artifacts (also part of make test), with its counts.
reliability: setup
	cd tests && ../$(PY) test_reliability.py

clean-checkpoints:
	rm -rf checkpoints
