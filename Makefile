# One entry point for set-up, the demo, tests and benchmarks. Each target installs what it needs.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1
# Material for MkDocs prints a banner about MkDocs 2 on every build; mkdocs is held below 2 in pyproject.toml.
export NO_MKDOCS_2_WARNING=1

.PHONY: setup demo test lint docs bench bench-quick bench-page clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU build of PyTorch first, so nothing below can pull a multi-GB accelerator build.
	$(BIN)/python -m pip install -q "torch==2.13.0" || $(BIN)/python -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
	$(BIN)/python -m pip install -q -e ".[dev]"
	# The compiled loops (numba) of the decision and the recurrent cells, built once here rather than by the first generation.
	$(BIN)/python -c "from dualpath.decider import kernels; from dualpath.models import cells; print(f'compiled the decision and cell loops in {kernels.warm() + cells.warm():.0f} s')"
	rm -f $(VENV)/.installed-* && touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/dualpath demo

test: $(STAMP)
	bash scripts/test-deps.sh
	$(BIN)/python -m ruff check src tests bench examples
	$(BIN)/lint-imports --no-cache
	$(BIN)/mkdocs build --strict
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/python -m ruff check src tests bench examples
	$(BIN)/lint-imports --no-cache

# The docs site (MkDocs + Material, API reference from the docstrings) into site/; offline.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

bench-quick: $(STAMP)
	$(BIN)/dualpath bench --quick --out bench-results

bench: $(STAMP)
	$(BIN)/dualpath bench --out bench-results

# The docs' benchmark results page (docs/benchmarks-results.md) from the last run's results.json.
bench-page: $(STAMP)
	$(BIN)/python bench/results_page.py --results bench-results/results.json --out docs/benchmarks-results.md

clean:
	rm -rf $(VENV) .pytest_cache bench-results site
