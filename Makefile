# Set-up, checks and runs. Only Python 3.10+ and make are needed: everything else goes in .venv.
# `make` alone lists the targets; `make PYTHON=python3.12 demo` makes .venv with that Python.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check
# Test processes: one per core and one more (the suite mostly waits on the commands it
# runs: 3 processes on 2 cores finish it about 12% sooner than 2, and it stays green).
TEST_JOBS ?= $(shell $(PYTHON) -c 'import os; print(len(os.sched_getaffinity(0)) + 1)' 2>/dev/null || echo 2)
# What the messages below suggest running again: the goals given, or demo.
AGAIN := $(or $(MAKECMDGOALS),demo)

.DEFAULT_GOAL := help
# No recipe line is echoed: each target prints what it has to say.
.SILENT:
.PHONY: help venv demo demo-api test lint fmt typecheck unit pipelines chaos bench docs wheel-check clean

## help: list the targets (what `make` alone does)
help:
	echo "make TARGET (Python 3.10 or newer as PYTHON, now $(PYTHON); everything goes in $(VENV)/):"
	awk '/^## [a-z-]+: / { sub(/^## /, ""); name = $$0; sub(/:.*/, "", name); \
	  text = $$0; sub(/^[^:]*: /, "", text); printf "  %-12s %s\n", name, text }' $(firstword $(MAKEFILE_LIST))

# Go on when the Python $(1) runs and is 3.10 or newer; else say so, naming it $(2), suggest
# running $(3)`make PYTHON=<a Python found here> <the same goals>`, and exit 1.
define need_python
ver=$$($(1) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || ver=; \
case "$$ver" in [0-9].[0-9]|[0-9].[0-9][0-9]) ;; *) ver=;; esac; \
if [ -z "$$ver" ] || [ "$${ver%%.*}" -lt 3 ] || { [ "$${ver%%.*}" -eq 3 ] && [ "$${ver#*.}" -lt 10 ]; }; then \
  if [ -z "$$ver" ]; then ver="not a Python that runs"; fi; \
  try=; for p in python3.13 python3.12 python3.11 python3.10; do \
    if $$p -c 'import sys; sys.exit(sys.version_info < (3, 10))' >/dev/null 2>&1; then try=$$p; break; fi; \
  done; \
  echo "choreo needs Python 3.10 or newer; $(2) is $$ver" >&2; \
  if [ -n "$$try" ]; then echo "run $(3)\`make PYTHON=$$try $(AGAIN)\`" >&2; \
  else echo "install Python 3.10 or newer, then run $(3)\`make PYTHON=/path/to/python3.x $(AGAIN)\`" >&2; fi; \
  exit 1; \
fi
endef

comma := ,

# pip install -e $(1) into .venv. When it fails before choreo was ever installed there, the
# half-made .venv goes, so that the next make starts afresh.
define install
$(PIP) -e '$(1)' || { \
  if [ ! -e $(VENV)/.installed ]; then rm -rf $(VENV); \
    echo "make: pip could not install $(1) with $(PY): removed the half-made $(VENV)" >&2; \
  else echo "make: pip could not install $(1) with $(PY) ($(VENV) is left as it was)" >&2; fi; \
  exit 1; }
endef

$(PY):
	if [ -e $(VENV) ]; then \
	  echo "$(VENV) exists but has no python that runs (made by a Python since moved or removed?)" >&2; \
	  echo "run \`make clean\` then \`make PYTHON=python3.x $(AGAIN)\` with Python 3.10 or newer" >&2; \
	  exit 1; \
	fi
	$(call need_python,$(PYTHON),PYTHON=$(PYTHON),)
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
	  echo "make: \`$(PYTHON) -m venv $(VENV)\` failed (Debian and Ubuntu: apt install python3-venv); removed $(VENV)" >&2; \
	  exit 1; }

# Every target using .venv checks first that its python runs and is 3.10 or newer (a .venv
# made by an older Python says what to do, instead of failing later in pip or choreo).
venv: $(PY)
	$(call need_python,$(PY),$(PY),\`make clean\` then )

$(VENV)/.installed: pyproject.toml | venv
	$(call install,.)
	touch $@

$(VENV)/.installed-dev: pyproject.toml | venv
	$(call install,.[dev])
	touch $(VENV)/.installed $@

$(VENV)/.installed-docs: pyproject.toml | venv
	$(call install,.[dev$(comma)docs])
	touch $(VENV)/.installed $(VENV)/.installed-dev $@

## demo: install and run the statements sample pipeline into an SQLite database
demo: $(VENV)/.installed
	cd sample_pipelines/statements && ../../$(BIN)/choreo run pipeline.yaml --input records.jsonl --output results.jsonl; \
	  status=$$?; \
	  echo "result lines: sample_pipelines/statements/results.jsonl; database: sample_pipelines/statements/statements.db (exit $$status: 3 lines are not JSON and 3 amounts are not numbers)"; \
	  echo "run 'make demo' again: the second run skips everything already loaded"; \
	  test $$status -le 1

$(VENV)/.installed-api: pyproject.toml | venv
	$(call install,.[sample-api])
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

## lint: ruff check and ruff format --check
lint: $(VENV)/.installed-dev
	$(BIN)/ruff check choreo_cli tests bench conftest.py
	$(BIN)/ruff format --check choreo_cli tests bench conftest.py

## typecheck: mypy --strict on choreo_cli
typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

## unit: the pytest suite (in parallel) and the docstrings' examples
unit: $(VENV)/.installed-dev
	@# Bytecode for the package first: the suite starts choreo hundreds of times, and with
	@# PYTHONDONTWRITEBYTECODE set (as on the CI machines) each start compiles it again (~0.1 s).
	$(PY) -m compileall -q choreo_cli > /dev/null
	$(BIN)/pytest -q -p no:cacheprovider -n $(TEST_JOBS)  # pytest-xdist
	$(BIN)/pytest -q -p no:cacheprovider --doctest-modules choreo_cli  # the docstrings' examples

## pipelines: the sample pipelines' own tests (their *.test.yaml files)
pipelines: $(VENV)/.installed-dev
	$(BIN)/choreo test sample_pipelines

## fmt: format the code and apply ruff's fixes
fmt: $(VENV)/.installed-dev
	$(BIN)/ruff format choreo_cli tests bench conftest.py
	$(BIN)/ruff check --fix choreo_cli tests bench conftest.py

## chaos: the long randomized and fault-injection runs (not part of `make test`)
chaos: $(VENV)/.installed-dev
	CHOREO_CHAOS=1 $(BIN)/pytest -q -p no:cacheprovider -m slow

## bench: every bench/ script (about 5 min on 2 cores); a figure below its target says MISSED
bench: $(VENV)/.installed-dev
	crashed=; \
	run() { echo "== bench/$$*"; began=$$(date +%s); \
	  $(PY) bench/"$$@" || crashed="$$crashed $$1"; echo "($$(($$(date +%s) - began)) s)"; echo; }; \
	run bench_coordinator.py $(BENCH_COORDINATOR); \
	run bench_run.py $(BENCH_RUN); \
	run bench_timeout.py $(BENCH_TIMEOUT); \
	run bench_executors.py $(BENCH_EXECUTORS); \
	run bench_limits.py $(BENCH_LIMITS); \
	run bench_long_line.py $(BENCH_LONG_LINE); \
	run bench_validate.py $(BENCH_VALIDATE); \
	run bench_test.py $(BENCH_TEST); \
	if [ -n "$$crashed" ]; then echo "bench: did not finish:$$crashed" >&2; exit 1; fi; \
	echo "bench: all 8 scripts ran (each prints ok or MISSED against its targets; a miss is no error)"

# The sizes `make bench` gives each script: its own defaults (see its --help) where they
# take seconds, smaller where they take minutes; about 5 minutes in all on 2 cores.
# `make bench BENCH_RUN=` runs bench_run.py at its defaults.
BENCH_COORDINATOR ?=
BENCH_RUN         ?=
BENCH_TIMEOUT     ?= --rounds 3
BENCH_EXECUTORS   ?= --trivial-records 300000 --rounds 1
BENCH_LIMITS      ?=
BENCH_LONG_LINE   ?=
BENCH_VALIDATE    ?=
BENCH_TEST        ?=

## docs: build the documentation site into site/ (mkdocs, strict: a warning fails it)
docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site  # no banner about MkDocs 2

## wheel-check: build the wheel, install it in a fresh venv, run `choreo schema` and `choreo init` from it
wheel-check: | venv
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

## clean: remove .venv, the builds, the docs site and the tools' caches
clean:
	rm -rf $(VENV) dist build site .pytest_cache .mypy_cache .ruff_cache
