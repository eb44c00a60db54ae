# The README's commands. `make demo` and `make test` set everything up first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Every tool keeps its state inside the project, never in ~ or /tmp.
WORK := $(CURDIR)/.lungcls-work
export PREFECT_HOME := $(WORK)/prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export RAY_TMPDIR := $(WORK)/ray
export MPLCONFIGDIR := $(WORK)/matplotlib

COMMA := ,

.PHONY: setup demo run test stress lint bench bench-real bench-monitor bench-lidc server deploy worker screenshot clean stack stack-down

setup: $(STAMP)

# uv installs the pinned stack in a fraction of pip's time (measured here: 22 s against
# 157 s, the same 221 packages); pip is the fallback where uv cannot be had. uv writes no
# bytecode unless told (pip does): without it, and with PYTHONDONTWRITEBYTECODE=1 as on CI,
# every process compiled Ray and torch from source and local Ray starts missed Ray's fixed
# 30 s window. uv does not read pip's configuration, so the local wheel folder is passed on.
export UV_CACHE_DIR := $(WORK)/uv-cache
INSTALL = $(BIN)/python -m pip install -q -c constraints.txt uv && $(BIN)/uv pip install -q \
	--compile-bytecode --python $(BIN)/python $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS)) \
	-c constraints.txt -e ".[$(1)]" || $(BIN)/python -m pip install -q -c constraints.txt -e ".[$(1)]"

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(call INSTALL,dev)
	touch $(STAMP)

demo: setup
	$(BIN)/lungcls demo

run: setup
	$(BIN)/lungcls run

# The Prefect UI: `make server` in one terminal, `make deploy` once, `make worker` in another.
PREFECT_PORT ?= 4200
deploy worker: export PREFECT_API_URL ?= http://127.0.0.1:$(PREFECT_PORT)/api
server: setup
	$(BIN)/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT)

deploy: setup
	$(BIN)/prefect work-pool inspect lungcls-process >/dev/null 2>&1 || \
		$(BIN)/prefect work-pool create lungcls-process --type process
	$(BIN)/prefect --no-prompt deploy --all --prefect-file deployments/prefect.yaml

worker: setup
	$(BIN)/prefect worker start --pool lungcls-process

# Test processes (pytest-xdist): the suite mostly waits on servers and Ray, so more processes
# than cores still help (measured on 2 cores: 3 processes 1012 s, 2 processes 1423 s);
# each runs its own S3 server, Ray and Prefect home.
TEST_WORKERS ?= 3
test: setup
	mkdir -p $(WORK)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal --durations=12 \
		--basetemp=$(WORK)/pytest

# The overlap and kill -9 tests (tests/overlap) at issue 15's numbers: 10 rounds of runs at
# once, 20 kills per stage, real `lungcls train` runs killed too (`make test` runs one round).
STRESS_OVERLAP_ROUNDS ?= 10
STRESS_KILL_ROUNDS ?= 20
stress: setup
	mkdir -p $(WORK)
	LUNGCLS_STRESS=1 LUNGCLS_OVERLAP_ROUNDS=$(STRESS_OVERLAP_ROUNDS) \
		LUNGCLS_KILL_ROUNDS=$(STRESS_KILL_ROUNDS) \
		$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal --durations=12 \
		--basetemp=$(WORK)/pytest tests/overlap

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup
	$(call INSTALL,dev$(COMMA)bench)
	rm -rf $(WORK)/bench/results
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/datasets.py
	$(BIN)/python bench/preprocess.py
	$(BIN)/python bench/shards.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/predict.py
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/flows.py
	$(BIN)/python bench/goals.py

# A local stack without Docker (Prefect server, S3, Ray head + worker node): infra/README.md.
stack: setup
	$(BIN)/python -m infra.local.stack up

stack-down:
	$(BIN)/python -m infra.local.stack down

# Real CT slices (../shared/data/iq-othnccd) through import, ingest, build, train, evaluate.
bench-real: setup
	$(BIN)/python bench/real_iqothnccd.py --sweep

# The same slices as batches by case-number range: the first 60 % trains the champion, the
# rest arrives in 2 batches, each scored by it and compared with its training data (issue 17).
bench-monitor: setup
	$(BIN)/python bench/monitor_real.py

# Real 3D nodules (../shared/data/lidc-nodules) through import-volumes, ingest, build, train,
# evaluate and promote, as a 5-fold patient-level cross-validation (configs/lidc.yaml).
bench-lidc: setup
	$(BIN)/python bench/real_lidc.py

clean:
	test ! -f $(WORK)/stack/stack.json || $(BIN)/python -m infra.local.stack down
	rm -rf lungcls-data $(WORK)
