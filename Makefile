# opsportal: `make run` starts the console on this machine, `make test` runs the suite.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# Django 6.1 needs Python 3.12 or newer: take the first such interpreter on PATH or under pyenv
# (or set PYTHON=/path/to/python3.12).
PYTHON ?= $(shell for p in python3.12 python3.13 python3 $$HOME/.pyenv/versions/3.1[2-9]*/bin/python3; do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1 \
	&& { $$p -c 'import sys; print(sys.executable)'; break; }; done)
STAMP := $(VENV)/.installed

.PHONY: run test install lint format bench vendor clean

$(STAMP): pyproject.toml
	@if [ -z "$(PYTHON)" ]; then echo "opsportal needs Python 3.12 or newer (set PYTHON=/path/to/python3.12)"; exit 1; fi
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) manage.py migrate --noinput
	$(PY) manage.py bootstrap
	$(PY) manage.py runstack

test: $(STAMP)
	$(PY) -m tests.run_all

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	$(PY) bench/inventory.py

# Re-vendor the front-end files from the npm registry (they are committed under static/vendor).
vendor:
	@tmp=$$(mktemp -d) && cd $$tmp && npm pack --silent htmx.org@2.0.11 htmx-ext-sse@2.2.4 >/dev/null \
	&& tar xzf htmx.org-2.0.11.tgz && cp package/dist/htmx.min.js $(CURDIR)/static/vendor/htmx-2.0.11.min.js \
	&& rm -rf package && tar xzf htmx-ext-sse-2.2.4.tgz && cp package/sse.js $(CURDIR)/static/vendor/htmx-ext-sse-2.2.4.js \
	&& rm -rf $$tmp

clean:
	rm -rf $(VENV) var
