# The project's commands: `make run` and `make test` are the two a newcomer needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: install run test tools lint format clean bench bench-failover bench-memory lock

# Installing twice is quick: pip runs again only when pyproject.toml changes.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing mirrorpool and its development tools into $(VENV)/ (pytest, ruff, mypy," \
		"the deploy checkers): about a minute the first time, quick after that."
	$(BIN)/python -m pip install --progress-bar on --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# Serves the configured DSNs, or starts a local primary+mirror under .devdb/ first.
run: $(STAMP)
	$(BIN)/mirrorpool dev

lint: $(STAMP)
	$(BIN)/ruff check app tests
	$(BIN)/ruff format --check app tests
	$(BIN)/mypy

# What the tests need from the system (tests/tools.sh): installed when missing on Debian or
# Ubuntu as root, else one line saying what to install, before anything runs.
tools:
	@bash tests/tools.sh $(TOOLS)

# The tests in two processes (a pair of servers each; a third was no faster on 2 cores),
# then the few that compare latencies under load on their own, where no other process takes
# their CPU.
test: tools lint
	$(BIN)/pytest -n 2 --dist loadfile -m "not timing"
	$(BIN)/pytest -m timing

# Side-by-side figures (see tests/bench/), then a new pool connection's CPU with a password
# against SCRAM keys: about 5 minutes on 2 cores.
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	@command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || \
		(apt-get update -qq && apt-get install -y -qq pgbouncer)
	@touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m tests.bench $(BENCH_ARGS)
	$(BIN)/python -m tests.bench.scram_connect
	$(MAKE) bench-failover

# Oversized answers only (part of `make bench` too), side by side with another source tree
# when given one: make bench-memory BENCH_MEMORY_ARGS="--compare DIR". About a minute.
bench-memory: $(BENCH_STAMP)
	$(BIN)/python -m tests.bench.memory $(BENCH_MEMORY_ARGS)

# Faults under load, mirrorpool next to Pgpool-II, and next to HAProxy in front of a real
# Patroni cluster: about 8 minutes.
BENCH_FAILOVER_PACKAGES := pgpool:pgpool2 haproxy:haproxy patroni:patroni etcd:etcd-server
bench-failover: $(BENCH_STAMP)
	@missing=""; for entry in $(BENCH_FAILOVER_PACKAGES); do \
		command -v $${entry%%:*} >/dev/null || missing="$$missing $${entry#*:}"; done; \
	if [ -n "$$missing" ]; then apt-get update -qq && apt-get install -y -qq $$missing; fi
	$(BIN)/python -m tests.bench.failover

# The image's dependencies (Dockerfile): pyproject.toml's runtime dependencies and the build
# backend, pinned with every file's hash. Resolved against PyPI alone (local pip config and
# wheel folders are set aside) so the hashes are PyPI's, for every platform the image builds on.
LOCK_ENV := env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL -u PIP_CONSTRAINT \
	PIP_CONFIG_FILE=/dev/null CUSTOM_COMPILE_COMMAND="make lock"
LOCK_ARGS := --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
	--no-emit-find-links --index-url https://pypi.org/simple

lock: $(STAMP)
	$(LOCK_ENV) $(BIN)/pip-compile $(LOCK_ARGS) --output-file requirements.lock pyproject.toml
	$(LOCK_ENV) $(BIN)/pip-compile $(LOCK_ARGS) --only-build-deps --build-deps-for wheel \
		--output-file requirements-build.lock pyproject.toml

format: $(STAMP)
	$(BIN)/ruff check --fix app tests
	$(BIN)/ruff format app tests

clean:
	rm -rf $(VENV) .devdb .mypy_cache .ruff_cache .pytest_cache *.egg-info
