# cdp-triggers developer tasks. `make demo` runs the embedded demo; `make test` runs lint + tests.

# The first interpreter that pyproject.toml accepts (>=3.11,<3.13).
PYTHON ?= $(shell for p in python3.11 python3.12 python3; do \
	$$p -c 'import sys; assert (3, 11) <= sys.version_info < (3, 13)' 2>/dev/null && exec echo $$p; \
	done; echo python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
COMPILED := $(VENV)/.compiled
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: venv services demo test lint bench chaos clean

venv: $(STAMP) $(COMPILED)

# Reinstalled only when pyproject.toml changes (the install is editable, code changes need nothing).
$(STAMP): pyproject.toml
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -e '.[test]'
	@touch $@

# The hot path compiled by Cython (cdp_triggers/compiled.py; into .build/compiled, or
# CDP_COMPILED_DIR): only modules changed since the last build are compiled again, and a
# module whose build does not match its source is imported from source, so a failed build
# costs speed, never correctness. The stamp says only that the build ran since an edit.
$(COMPILED): $(STAMP) $(wildcard cdp_triggers/*.py operators/*.py state/*.py sinks/*.py flows/*.py)
	@$(BIN)/cdp-triggers compile && touch $@ || \
		echo "warning: the hot path is not compiled (see above); it runs from source, slower"

# Binaries the integration tests start themselves (the Kafka broker comes from the venv).
services:
	@{ command -v redis-server >/dev/null || [ -x /usr/bin/redis-server ]; } && \
	command -v chromium >/dev/null || { \
		echo "redis-server or chromium (report screenshot test) missing: installing with apt-get"; \
		$(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server chromium; }

demo: venv
	$(BIN)/cdp-triggers demo

lint: venv
	$(BIN)/ruff check .

test: venv services
	$(BIN)/ruff check .
	$(BIN)/pytest -q

bench: venv
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.delivery
	$(BIN)/python -m bench.latency
	CDP_EPOCH_SECONDS=1 $(BIN)/python -m bench.latency --recovery
	$(BIN)/python -m bench.recovery

# The chaos suite at 5× the CI size (more customers, more kill -9 rounds); CI runs it at 1×.
chaos: venv services
	CDP_CHAOS_SCALE=5 $(BIN)/pytest -q -s -m chaos

clean:
	rm -rf $(VENV) build .build .pytest_cache .ruff_cache .hypothesis *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
