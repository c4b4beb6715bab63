# Set-up, checks and runs. Only Python 3.10+ and make are needed: everything else goes in .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
# Test processes: one per core and one more (the suite mostly waits on the commands it
# runs: 3 processes on 2 cores finish it about 12% sooner than 2, and it stays green).
TEST_JOBS ?= $(shell $(PYTHON) -c 'import os; print(len(os.sched_getaffinity(0)) + 1)' 2>/dev/null || echo 2)

.PHONY: demo demo-api test lint fmt typecheck unit pipelines chaos bench wheel-check clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(VENV)/.installed $@

## demo: install and run the statements sample pipeline into an SQLite database
demo: $(VENV)/.installed
	cd sample_pipelines/statements && ../../$(BIN)/choreo run pipeline.yaml --input records.jsonl --output results.jsonl; \
	  status=$$?; \
	  echo "result lines: sample_pipelines/statements/results.jsonl; database: sample_pipelines/statements/statements.db (exit $$status: 3 lines are not JSON and 3 amounts are not numbers)"; \
	  echo "run 'make demo' again: the second run skips everything already loaded"; \
	  test $$status -le 1

$(VENV)/.installed-api: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[sample-api]'
	touch $(VENV)/.installed $@

## demo-api: run the api sample (8 workers, rate-limited) against its own local server, and print the server's count of 429s
demo-api: $(VENV)/.installed-api
	@set -e; cd sample_pipelines/api; \
	  log=$$(mktemp); \
	  ../../$(PY) -u server.py --port 0 >"$$log" 2>&1 & server=$$!; \
	  stop() { kill $$server 2>/dev/null && wait $$server; }; \
	  trap 'stop || true; rm -f "$$log"' EXIT; trap 'exit 130' INT; trap 'exit 143' TERM; \
	  for i in $$(seq 100); do grep -q '^serving ' "$$log" && break; kill -0 $$server 2>/dev/null || break; sleep 0.1; done; \
	  url=$$(sed -n 's/^serving //p' "$$log"); \
	  if [ -z "$$url" ]; then echo "demo-api: the api server did not start:"; cat "$$log"; exit 1; fi; \
	  echo "api server at $$url (25 requests a second; the pipeline's limit: 20)"; \
	  status=0; \
	  API_URL=$$url ../../$(BIN)/choreo run pipeline.yaml --input records.jsonl --output results.jsonl --workers 8 || status=$$?; \
	  stop || true; \
	  tail -n 1 "$$log"; \
	  echo "429s seen by the server: $$(sed -n 's/.* \([0-9][0-9]*\) answered 429.*/\1/p' "$$log")"; \
	  echo "result lines: sample_pipelines/api/results.jsonl (exit $$status: 8 customer ids are unknown to the API, 404)"; \
	  test $$status -le 1

## test: lint, type-check and run the whole test suite (what CI runs)
test: $(VENV)/.installed-dev lint typecheck unit pipelines

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check choreo_cli tests bench
	$(BIN)/ruff format --check choreo_cli tests bench

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

unit: $(VENV)/.installed-dev
	@# Bytecode for the package first: the suite starts choreo hundreds of times, and with
	@# PYTHONDONTWRITEBYTECODE set (as on the CI machines) each start compiles it again (~0.1 s).
	$(PY) -m compileall -q choreo_cli > /dev/null
	$(BIN)/pytest -q -p no:cacheprovider -n $(TEST_JOBS)  # pytest-xdist
	$(BIN)/pytest -q -p no:cacheprovider --doctest-modules choreo_cli  # the docstrings' examples

## pipelines: the sample pipelines' own tests (their *.test.yaml files)
pipelines: $(VENV)/.installed-dev
	$(BIN)/choreo test sample_pipelines

fmt: $(VENV)/.installed-dev
	$(BIN)/ruff format choreo_cli tests bench
	$(BIN)/ruff check --fix choreo_cli tests bench

## chaos: the long randomized and fault-injection runs (not part of `make test`)
chaos: $(VENV)/.installed-dev
	CHOREO_CHAOS=1 $(BIN)/pytest -q -p no:cacheprovider -m slow

## bench: speed and memory figures, as ratios against baselines measured in the same run
bench: $(VENV)/.installed-dev
	$(PY) bench/bench_coordinator.py
	$(PY) bench/bench_run.py
	$(PY) bench/bench_validate.py
	$(PY) bench/bench_executors.py

## wheel-check: build the wheel, install it in a fresh venv, run `choreo schema` and `choreo init` from it
wheel-check: $(PY)
	rm -f dist/choreo_cli-*.whl
	$(PY) -m pip wheel --quiet --disable-pip-version-check --no-deps -w dist .
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	  $(PYTHON) -m venv "$$tmp/venv" && \
	  "$$tmp/venv/bin/python" -m pip install --quiet --disable-pip-version-check dist/choreo_cli-*.whl && \
	  cd "$$tmp" && "$$tmp/venv/bin/choreo" schema > schema.json && \
	  cmp schema.json "$(CURDIR)/schemas/pipeline.schema.json" && \
	  echo "wheel-check: the installed wheel's choreo schema matches schemas/pipeline.schema.json" && \
	  "$$tmp/venv/bin/choreo" init starter 2>/dev/null && cd starter && \
	  "$$tmp/venv/bin/choreo" validate pipeline.yaml && "$$tmp/venv/bin/choreo" test && \
	  "$$tmp/venv/bin/choreo" run pipeline.yaml -i records.jsonl -o /dev/null && \
	  echo "wheel-check: choreo init from the wheel writes a pipeline that validates, passes its tests and runs"

clean:
	rm -rf $(VENV) dist build .pytest_cache .mypy_cache .ruff_cache
