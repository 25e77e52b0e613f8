# The two commands a user needs: `make repro` and `make test`. Both set the machine up first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: setup data repro test bench clean-checkpoints

setup: $(STAMP) data

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip >/dev/null
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -c "import torch, torchvision, mtkahypar, dvc; print('set-up ok: torch', torch.__version__, 'torchvision', torchvision.__version__)"
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

repro: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" dvc repro

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) -m benchmarks

clean-checkpoints:
	rm -rf checkpoints
