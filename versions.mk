# The version matrix (issue 18), included by the Makefile:
#   make test-versions                    the suite below on real PostgreSQL 14, 16, 17 and 18
#   make test-versions PG_VERSIONS=18     on one version
#   make pg-versions                      only installs the servers (tools/pg-versions)
# Each version's server comes from tools/pg-versions (the npm registry, pinned; a version that
# cannot be fetched fails the target). Its bin/ goes first on PATH, so pytest-postgresql starts
# that server (tests/fixtures/database.py asks pg_config --bindir; tools/pg-versions adds a pg_config
# that answers it). 13 is installed too, only to test that install refuses it.

PG_VERSIONS ?= 14 16 17 18
PG_VERSIONS_DIR ?= $(CURDIR)/.pg-versions

# What differs between versions (issue 18, item 1), by the tests that cover it; the one list to
# update when tests move. tests/versions: the writes that must never fail, version differences,
# the refusal of 13. Then capture of every column type the decoding tests use, both ingest paths
# with the differential check, kill -9 of the worker, the install routes (CREATE EXTENSION,
# bemi-pg install, upgrades from 1.0 and 1.1, the oldest that run on every supported server),
# uninstall, trust, time travel and revert.
VERSION_TESTS ?= \
  tests/versions \
  tests/ingest/test_decoding.py \
  tests/ingest/test_pgoutput.py \
  tests/ingest/test_ingest.py \
  tests/ingest/test_differential.py \
  tests/ingest/test_worker_faults.py \
  tests/operations/test_install.py \
  tests/operations/test_upgrade.py \
  tests/operations/test_upgrade_catalog.py \
  tests/operations/test_trust.py \
  tests/history/test_time_travel.py \
  tests/history/test_revert.py

.PHONY: pg-versions test-versions

# The servers get the extension's files as make install installs them (build/extension.files).
pg-versions: deps build/extension.files
	PG_VERSIONS_DIR=$(PG_VERSIONS_DIR) bash tools/pg-versions 13 $(PG_VERSIONS)

# Every version runs, one after another (one server at a time on a small machine); the target
# fails at the end if any did, naming them.
test-versions: deps venv pg-versions
	@failed=; for v in $(PG_VERSIONS); do \
	  echo "== PostgreSQL $$v"; start=$$(date +%s); \
	  $(AS_USER) PATH=$(PG_VERSIONS_DIR)/$$v/bin:$$PATH BEMI_PG_MAJOR=$$v \
	    BEMI_PG13_BINDIR=$(PG_VERSIONS_DIR)/13/bin \
	    $(VENV)/bin/python -m pytest -p no:cacheprovider -n $(PYTEST_WORKERS) $(PYTEST_ARGS) $(VERSION_TESTS) \
	    || failed="$$failed $$v"; \
	  echo "== PostgreSQL $$v: $$(( $$(date +%s) - start )) s"; \
	done; \
	if [ -n "$$failed" ]; then echo "test-versions failed on PostgreSQL:$$failed"; exit 1; fi
