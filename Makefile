# Two entry points do all set-up on a fresh machine: `make demo` and `make test` (`make test-all`: every test).
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all venv clean bench models images images-arm64 images-cloud-cpu

# (ranscoder.c/.h, hyperdec.c/.h: `pip install -e .` builds the edge's C library in place, so a change reinstalls)
$(STAMP): requirements.txt pyproject.toml setup.py proto/splitinfer.proto proto/grpc_service.proto \
          shared/codec/ranscoder.c shared/codec/ranscoder.h shared/codec/hyperdec.c shared/codec/hyperdec.h
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m shared.proto_build
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/splitinfer demo

# pytest exit code 5 (no tests collected) is a failure here, never a silent pass.
# `make test` leaves out the tests marked slow (training loops, torchrun, long fuzzing); `make test-all` (CI) runs all.
# Both run the tests marked timing (wall-clock upper bounds); to leave them out: pytest -m "not slow and not timing".
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

test-all: $(STAMP)
	$(PY) -m pytest -q tests

models: $(STAMP)
	$(VENV)/bin/splitinfer models

bench: $(STAMP)
	$(PY) benchmarks/codec_overhead.py

# Build docker/Dockerfile.cloud and docker/Dockerfile.edge with buildah (no Docker engine needed), run the server
# in one image and the edge client in the other, check the answers; prints image sizes and build times.
# Needs root and about 25 GB of disk; see docs/deploy.md.
images:
	docker/build.sh

# The edge image for linux/arm64 (buildah + qemu-user-static; no cloud image: the edge packages are exported here
# with .venv), then run under emulation against the x86_64 cloud on loopback: every sample x every rung and a set of
# levels must give byte-identical messages to the x86_64 edge and the same answers. Needs root; docs/deploy.md.
images-arm64: $(STAMP)
	scripts/build_edge_arm64.sh

# The torch-free CPU cloud image (docker/Dockerfile.cloud-cpu: ONNX Runtime, numpy, the compiled rANS decoder) for
# linux/amd64: cloud packages exported here with .venv, then the image serves them on loopback to this machine's
# edge runtime (every sample x rung and level). Needs root; docs/deploy.md.
images-cloud-cpu: $(STAMP)
	scripts/build_cloud_cpu.sh

clean:
	rm -rf $(VENV) build *.egg-info
