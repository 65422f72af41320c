# hauler developer commands. `make help` lists them.
# Everything runs in a project virtualenv ($(VENV)), created on first use.

VENV ?= .venv
PY := $(VENV)/bin/python
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(VIRTUAL_ENV)/bin:$(PATH)

.DEFAULT_GOAL := help
.PHONY: help dev quickstart test test-rust test-python bench lint fmt clean

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

test: dev test-rust test-python ## The whole suite: cargo test, then pytest (what CI runs)

test-rust: ## cargo test for the engine and the bindings
	cargo test --workspace --quiet

test-python: ## pytest against the built package
	$(PY) -m pytest -q

bench: dev ## pytest-benchmark micro benchmarks (enqueue, end-to-end throughput)
	$(PY) -m pytest benches -q --benchmark-only --benchmark-columns=min,median,mean,ops,rounds

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

clean: ## Remove build outputs and the virtualenv
	cargo clean
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .benchmarks
