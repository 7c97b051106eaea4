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

.PHONY: venv demo test test-fast proto bench-compression clean

venv: $(STAMP)

EXT_SOURCES := $(wildcard cuda_ext/csrc/*) cuda_ext/build.py

$(STAMP): pyproject.toml setup.py $(EXT_SOURCES)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1 ninja
	$(BIN)/pip install -q --no-build-isolation -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fedcore demo --clients 3 --rounds 5

test: $(STAMP)
	sh tests/browser/install_chromium.sh
	$(BIN)/python -m pytest -q -ra

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m "not slow and not browser"

proto: $(STAMP)
	$(BIN)/python -m transports.grpc.codegen

bench-compression: $(STAMP)
	$(BIN)/python -m experiments.compression_bench

clean:
	rm -rf $(VENV) build *.egg-info
