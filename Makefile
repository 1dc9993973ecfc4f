# The README's two commands: `make demo` and `make test`. Everything runs on loopback, no Docker:
# moto (DynamoDB, DynamoDB Streams, SQS) and the test servers come from .venv, installed here.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
CARGO ?= cargo

.PHONY: test demo venv lint unit servers-selftest integration lifecycle check-deploy bench bench-instructions bench-smoke chaos deny clean

$(VENV)/.installed: tests/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/requirements.txt
	touch $@

venv: $(VENV)/.installed

## test: everything CI runs
test: lint unit servers-selftest check-deploy deny integration bench-smoke

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --locked -- -D warnings

unit:
	$(CARGO) test --locked --lib --bins

servers-selftest: venv
	$(PY) tests/servers/test_nakadi_server.py
	$(PY) tests/servers/test_streams_fault_server.py

integration: venv
	$(CARGO) test --locked --test '*' -- --test-threads=1

## lifecycle: the compressed day alone (rollovers, a split, kills, a pause, an outage past
## retention) at both initial positions; `make test` runs it too. LIFECYCLE_ROLLOVERS=N lengthens it.
lifecycle: venv
	$(CARGO) test --locked --test it lifecycle:: -- --test-threads=1 --nocapture

check-deploy: venv
	bash scripts/install-deploy-tools.sh
	bash scripts/check-deploy.sh

## bench: the performance table (docs/performance.md): release build, about 10 minutes
bench: $(VENV)/.bench-installed
	$(CARGO) build --release --locked
	$(PY) benches/run.py --relay $${CARGO_TARGET_DIR:-target}/release/dynamodb-nakadi-relay

## bench-instructions: instructions per idle GetRecords call under callgrind, which a noisy
## machine does not move as it moves CPU time (benches/instructions.py); installs valgrind
bench-instructions: $(VENV)/.bench-installed
	command -v valgrind >/dev/null || (apt-get update -qq && apt-get install -y -qq valgrind)
	$(CARGO) build --release --locked
	$(PY) benches/instructions.py --relay $${CARGO_TARGET_DIR:-target}/release/dynamodb-nakadi-relay

## bench-smoke: every part of the bench briefly, on the debug build: proves the scripts work
bench-smoke: $(VENV)/.bench-installed
	$(CARGO) build --locked
	$(PY) benches/run.py --smoke --relay $${CARGO_TARGET_DIR:-target}/debug/dynamodb-nakadi-relay

$(VENV)/.bench-installed: $(VENV)/.installed benches/requirements.txt
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r benches/requirements.txt
	touch $@

## deny: licenses and bans of every dependency against deny.toml (cargo-deny, pinned, in .tools/)
deny:
	bash scripts/install-cargo-deny.sh
	$(CARGO) fetch --locked
	PATH="$(CURDIR)/.tools/bin:$$PATH" $(CARGO) deny --offline check licenses bans

## chaos: the long chaos run (10,000 records, 6 kills, about 4 minutes); a short one runs in `make test`
chaos: venv
	CHAOS_RECORDS=$${CHAOS_RECORDS:-10000} CHAOS_KILLS=$${CHAOS_KILLS:-6} \
		$(CARGO) test --locked --test it chaos:: -- --test-threads=1 --nocapture

## demo: moto, the Nakadi test server and the relay on loopback; writes sample items and shows the events
demo: venv
	$(CARGO) build --locked
	bash scripts/demo.sh

clean:
	rm -rf target/test-output
