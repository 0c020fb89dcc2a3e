# bemi: a pure-SQL PostgreSQL extension (PGXS) and its Python client.
#   make install   installs the extension into the server's share directory
#   make demo      runs the example end to end on a throwaway server
#   make test      runs the test suite against real PostgreSQL (make test-quick: without the slow and crash tests)
#   make bench     measures write overhead and ingest throughput (bench/results/, docs/benchmarks.md)
#   make test-versions  runs the version suite on real PostgreSQL 14, 16, 17 and 18 (versions.mk)

EXTENSION = bemi
EXTVERSION = $(shell sed -n "s/^default_version = '\(.*\)'/\1/p" $(EXTENSION).control)
# sql/src/ is the one current definition of the extension: its files, in order, make the
# standalone script of the current version (committed, so that PGXS and bemi-pg install ship it;
# tests/operations/test_definition.py fails when it differs from what sql/src/ builds).
SQL_SRC = $(sort $(wildcard sql/src/*.sql))
SQL_BUILT = sql/$(EXTENSION)--$(EXTVERSION).sql
# The server's extension directory gets every script of sql/ but the standalone one, which goes
# in as bemi--0--$(EXTVERSION).sql, after the gate sql/bemi--0.sql: CREATE EXTENSION takes that
# path (0, then 0 to $(EXTVERSION): shorter than 1.0, 1.1, $(EXTVERSION)), so the gate's version
# check runs first. PostgreSQL 13 and older cannot parse the standalone script (its SQL-standard
# function bodies), and CREATE EXTENSION parses a whole script before it runs any of it: without
# the gate, 13 would stop at a syntax error instead of saying that bemi needs 14 (issue 18).
GATE_STEP = build/$(EXTENSION)--0--$(EXTVERSION).sql
DATA = $(filter-out $(SQL_BUILT),$(wildcard sql/*--*.sql))
DATA_built = $(GATE_STEP)

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs 2>/dev/null)
ifneq ($(wildcard $(PGXS)),)
include $(PGXS)
all: $(SQL_BUILT)
# An install from before the gate left the standalone script there: CREATE EXTENSION would run it
# instead of the gate's path.
install: remove-standalone
.PHONY: remove-standalone
remove-standalone:
	rm -f '$(DESTDIR)$(datadir)/$(datamoduledir)/$(notdir $(SQL_BUILT))'
else
install: deps
	$(MAKE) install
endif

VENV := .venv
# The venv must be readable by the unprivileged user: prefer the system Python to one under /root.
PYTHON ?= $(firstword $(wildcard /usr/bin/python3) python3)
# PostgreSQL refuses to run as root: as root, servers (and the tests that start them) run as postgres.
AS_USER := $(if $(filter 0,$(shell id -u)),runuser -u postgres -- env HOME=/tmp,)

# The files of sql/src/ one after another, a blank line between two.
$(SQL_BUILT): $(SQL_SRC) $(EXTENSION).control
	awk 'FNR == 1 && NR != 1 { print "" } { print }' $(SQL_SRC) > $@

$(GATE_STEP): $(SQL_BUILT)
	@mkdir -p $(@D)
	cp $< $@

# What make install puts in the extension directory, one file a line (tools/pg-versions reads it);
# written each time, so that a script gone from sql/ leaves the list.
.PHONY: build/extension.files
build/extension.files: $(EXTENSION).control $(DATA) $(DATA_built)
	@mkdir -p $(@D)
	printf '%s\n' $^ > $@

.PHONY: deps venv test test-quick demo bench bench-quick node-deps lint stress stress-quick

deps:
	@bash tools/install-deps

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 $(VENV)/bin/pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# examples/node's npm packages (node-postgres), for tests/integrations/test_node_example.py; without node
# (not root, so tools/install-deps could not install it) that test is left out.
node-deps:
	@if command -v npm >/dev/null; then cd examples/node && npm ci --no-audit --no-fund --loglevel=error; fi

# pgspot, in its own virtual environment (.venv-pgspot): zero findings on the extension script.
lint:
	bash tools/pgspot

# Tests run in PYTEST_WORKERS processes (pytest-xdist), each with its own PostgreSQL server: most
# of a test's time is spent waiting on servers and workers, not on the cores.
PYTEST_WORKERS ?= 4
PYTEST = $(AS_USER) $(VENV)/bin/python -m pytest -p no:cacheprovider -n $(PYTEST_WORKERS) $(PYTEST_ARGS) \
	  $$(command -v node >/dev/null || echo --ignore=tests/integrations/test_node_example.py)

# pg-versions: the failover test runs a real PostgreSQL 17 standby (tools/pg-versions).
test: deps install venv node-deps lint pg-versions
	$(PYTEST) tests

# Leaves out the tests marked slow and the fault tests that kill processes or stop the server (crash).
test-quick: deps install venv node-deps
	$(PYTEST) -m "not slow and not crash" tests

demo: deps install venv
	$(AS_USER) $(VENV)/bin/bemi-pg demo

# The bench writes bench/results/ as the unprivileged user that runs it.
$(VENV)/.bench-installed: $(VENV)/.installed
	$(VENV)/bin/pip install -q -e '.[bench]'
	touch $@

bench bench-quick: deps install venv $(VENV)/.bench-installed
	install -d $(if $(AS_USER),-o postgres) bench/results
	$(AS_USER) $(VENV)/bin/python -m bench.run $(if $(filter bench-quick,$@),--quick)

# The long fault and load scenarios (stress/run.py), with a table of what was counted.
stress stress-quick: deps install venv
	$(AS_USER) $(VENV)/bin/python stress/run.py $(if $(filter stress-quick,$@),--quick)

# The version matrix: make test-versions (real PostgreSQL 14, 16, 17 and 18).
include versions.mk
