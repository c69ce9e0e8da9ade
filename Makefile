# hope_megatron: `make test` and `make demo` each set themselves up on a fresh machine (Python 3.11 + pip).
#   make test                 create .venv if missing, install torch + the package, run the test suite
#   make demo                 the CPU demo: corpus -> tokenizer -> shards -> train -> convert -> evaluate (see README)
# Variables: PYTHON (interpreter to build .venv from), VENV (default .venv),
#   TORCH_SPEC (default torch==2.13.0), TORCH_INDEX (e.g. https://download.pytorch.org/whl/cpu for a CPU-only wheel),
#   PYTEST_ARGS (extra pytest arguments).

PYTHON ?= python3.11
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PYTEST_ARGS ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hope_megatron-installed

.PHONY: test demo install clean-venv

install: $(STAMP)

# Re-installs only when setup.py changes: the second `make test` starts the suite at once.
$(STAMP): setup.py
	@test -x $(PY) || { command -v $(PYTHON) >/dev/null 2>&1 || { echo "make: $(PYTHON) not found; run 'make PYTHON=/path/to/python3.11 test'"; exit 1; }; $(PYTHON) -m venv $(VENV); }
	@echo "[install] $(TORCH_SPEC) into $(VENV) (kept if already there)"
	$(PY) -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)
	@echo "[install] hope_megatron[dev] (editable); torch is already satisfied, so pip never replaces it"
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) tools/check_torch_build.py
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) tools/demo.py

clean-venv:
	rm -rf $(VENV)
