# fedcore: the two commands of the README are `make demo` and `make test`.
# Both create .venv on a fresh machine and install what they need into it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The C++/CUDA extension is built ahead of time by the package build (see setup.py).
# nvcc on the PATH is a wrapper: point torch at the real toolkit root.
export FEDCORE_BUILD_CUDA ?= auto
export CUDA_HOME ?= /usr/local/cuda
export TORCH_CUDA_ARCH_LIST ?= 8.0;9.0
export MAX_JOBS ?= 2

.PHONY: venv demo test test-fast typecheck proto bench-compression bench-split browser browser-optional clean

venv: $(STAMP)

EXT_SOURCES := $(wildcard cuda_ext/csrc/*) cuda_ext/build.py

$(STAMP): pyproject.toml setup.py $(EXT_SOURCES)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1 ninja
	$(BIN)/pip install -q --no-build-isolation -e '.[test,deploy,sim,privacy]'
	# checkov lives in its own venv: it pins packaging/networkx versions fedcore's tools cannot use.
	test -x $(VENV)/checkov/bin/checkov || ($(PY) -m venv $(VENV)/checkov && $(VENV)/checkov/bin/pip install -q checkov==3.3.30)
	touch $(STAMP)

# The browser device's bundle (tfjs + wasm, from npm with the lockfile); optional: without
# node/npm the /device page says it is not built and its tests skip with that reason.
BROWSER_BUNDLE := browser/dist/device.js
BROWSER_INPUTS := browser/package.json browser/package-lock.json browser/build.mjs $(wildcard browser/src/*.js)

browser: $(BROWSER_BUNDLE)

$(BROWSER_BUNDLE): $(BROWSER_INPUTS)
	cd browser && npm ci --no-audit --no-fund && node build.mjs

browser-optional:
	@if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then \
		$(MAKE) --no-print-directory browser || echo "browser device not built (npm failed): /device will say so"; \
	else echo "node/npm not found: skipping the browser device (/device will say it is not built)"; fi

demo: $(STAMP) browser-optional
	$(BIN)/fedcore demo --clients 3 --rounds 5

test: $(STAMP) browser-optional typecheck
	sh tests/browser/install_chromium.sh
	$(BIN)/python -m pytest -q -ra

typecheck: $(STAMP)
	$(BIN)/python -m mypy fedcore transports compression

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m "not slow and not browser"

proto: $(STAMP)
	$(BIN)/python -m transports.grpc.codegen

bench-compression: $(STAMP)
	$(BIN)/python -m experiments.compression_bench

bench-split: $(STAMP)
	$(BIN)/python -m fedcore.split.bench

clean:
	rm -rf $(VENV) build *.egg-info
