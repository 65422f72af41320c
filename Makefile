# hauler developer commands. `make help` lists them.
# Everything runs in a project virtualenv ($(VENV)), created on first use.

VENV ?= .venv
PY := $(VENV)/bin/python
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(VIRTUAL_ENV)/bin:$(PATH)

.DEFAULT_GOAL := help
comma := ,
.PHONY: help dev quickstart test test-rust test-python bench lint fmt clean postgres-start postgres-stop

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/.created:
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip 'maturin>=1.5,<2'
	touch $@

dev: $(VENV)/.created ## Build the native module (release) into the virtualenv with the dev tools
	maturin develop --release --extras dev --quiet

quickstart: dev ## Run examples/quickstart.py: jobs queued into SQLite and processed
	$(PY) examples/quickstart.py

# Run $(1) with HAULER_TEST_POSTGRES_DSN set: the caller's server, or a throwaway one
# started by .ci/postgres.sh for the duration (skipped with HAULER_TEST_POSTGRES=skip).
define with_postgres
	@if [ -n "$$HAULER_TEST_POSTGRES_DSN" ] || [ "$$HAULER_TEST_POSTGRES" = skip ]; then \
		$(1); \
	else \
		pg_env=$$(bash .ci/postgres.sh start) || exit 1; eval "$$pg_env"; \
		trap 'bash .ci/postgres.sh stop' EXIT; \
		$(1); \
	fi
endef

test: dev ## The whole suite: cargo test, then pytest, with a throwaway PostgreSQL (what CI runs)
	$(call with_postgres,$(MAKE) --no-print-directory test-rust test-python)

test-rust: ## cargo test for the engine and the bindings (needs HAULER_TEST_POSTGRES_DSN)
	cargo test --workspace --quiet

test-python: ## pytest against the built package (needs HAULER_TEST_POSTGRES_DSN)
	$(PY) -m pytest -q

bench: dev ## pytest-benchmark micro benchmarks (enqueue, end-to-end throughput), all storages
	$(call with_postgres,$(PY) -m pytest benches -q --benchmark-only --benchmark-columns=min$(comma)median$(comma)mean$(comma)ops$(comma)rounds)

lint: dev ## clippy, rustfmt --check, ruff, ruff format --check, mypy --strict, stubtest
	cargo clippy --workspace --all-targets --quiet -- -D warnings
	cargo fmt --all --check
	ruff check python tests benches examples
	ruff format --check python tests benches examples
	mypy
	$(PY) -m mypy.stubtest hauler._native

fmt: ## Format Rust and Python sources
	cargo fmt --all
	ruff format python tests benches examples
	ruff check --fix python tests benches examples

postgres-start: ## Start the throwaway test PostgreSQL; prints the export line to eval
	@bash .ci/postgres.sh start

postgres-stop: ## Stop the throwaway test PostgreSQL and delete its files
	@bash .ci/postgres.sh stop

clean: ## Remove build outputs and the virtualenv
	cargo clean
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .benchmarks
