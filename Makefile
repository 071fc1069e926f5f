# Weft developer entry points. Each target installs what it needs itself.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
APT_TEST_PKGS  := curl nginx-light openssl nghttp2-client redis-server iptables iproute2
APT_BENCH_PKGS := curl nginx-light wrk util-linux valgrind openssl nghttp2-client nghttp2-server redis-server

.PHONY: fuzz demo edge-demo test test-pure lint typecheck pytest compile bench bench-instructions sysdeps sysdeps-bench clean proto

$(STAMP): pyproject.toml
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null; fi; \
	  $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	WEFT_PURE=1 $(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

# The compiled data path (setup.py, mypyc): built beside the sources, and rebuilt when one
# of them changed since (sidecar/build.py tells). `WEFT_PURE=1 make …` runs the sources.
compile: $(STAMP)
ifneq ($(WEFT_PURE),1)
	@if [ setup.py -nt sidecar/compiled.json ] || ! $(PY) -W ignore -c \
	    "import sidecar, sys; sys.exit(sidecar.BUILD != 'compiled')"; then \
	  echo "compiling the data path (mypyc, about a minute)"; \
	  $(PY) setup.py -q build_ext --inplace; fi
endif

# Test peers from Debian (installed only when running as root; otherwise tests that
# need a missing peer are skipped with the reason).
sysdeps:
	@if [ "$$(id -u)" = 0 ]; then \
	  missing=""; for p in $(APT_TEST_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi; \
	fi

sysdeps-bench:
	@if [ "$$(id -u)" = 0 ]; then \
	  missing=""; for p in $(APT_BENCH_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi; \
	fi

# The main job: the whole shop mesh on this machine, with traffic, until Ctrl-C.
demo: $(STAMP) compile
	$(PY) -m mesh_ctl up examples/shop --traffic

edge-demo: $(STAMP) compile
	$(PY) -m examples.edge_demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# grpc-js, the Node.js gRPC client, as one more peer (only where npm exists).
NODE_PEERS := .cache/node/node_modules/@grpc/grpc-js
$(NODE_PEERS):
	@if command -v npm >/dev/null 2>&1; then \
	  npm install --prefix .cache/node --silent --no-audit --no-fund @grpc/grpc-js@1 || true; fi

# Envoy's own protos (the gRPC project's xds-protos), for the external authorization
# test service only: apart from the venv, because the package also ships copies of
# opentelemetry's and googleapis' protos that would replace the installed ones.
XDS_PROTOS := .cache/xds-protos/envoy
$(XDS_PROTOS): | $(STAMP)
	$(PY) -m pip install -q --no-deps --target .cache/xds-protos 'xds-protos>=1.60'

# The suite runs on the compiled build; the unit tests and the core proxying tests run once
# more on the sources, the fallback for machines without a C compiler.
PURE_TESTS := tests/unit tests/integration/test_proxy_http1.py tests/integration/test_h2_frames.py
pytest: $(STAMP) sysdeps $(NODE_PEERS) $(XDS_PROTOS) compile
	WEFT_EXPECT_BUILD=compiled $(PY) -m pytest -q
	WEFT_PURE=1 WEFT_EXPECT_BUILD=pure $(PY) -m pytest -q $(PURE_TESTS)

test: lint typecheck pytest

# Everything on the sources only.
test-pure: $(STAMP) sysdeps $(NODE_PEERS) $(XDS_PROTOS)
	WEFT_PURE=1 WEFT_EXPECT_BUILD=pure $(PY) -m pytest -q

bench: $(STAMP) sysdeps-bench compile
	WEFT_PURE=1 $(PY) -m pip install -q -e '.[bench]'
	$(PY) -m bench.run
	$(PY) -m bench.propagation --sidecars 1000
	$(PY) -m bench.attacks
	$(PY) -m bench.global_ratelimit
	$(PY) -m bench.workers
	$(PY) -m bench.gateway

bench-instructions: $(STAMP) sysdeps-bench compile
	$(PY) -m bench.instructions

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .cache build sidecar/compiled.json
	find . -name '*.so' -not -path './.venv/*' -delete

# Regenerate the protobuf modules from their .proto files (checked in; needs the test extras).
proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. --pyi_out=. mesh_ctl/api/*.proto
	$(PY) -m grpc_tools.protoc -I . --python_out=. --pyi_out=. sidecar/filters/proto/*.proto

# Coverage-guided fuzzing (atheris), FUZZ_SECONDS per harness; findings go to fuzz/findings/
# (an input that runs over 10 s is one: a hang or a backtracking pattern).
# atheris follows coverage through Python bytecode, so the guided runs use the sources; what
# they keep is then replayed on the compiled build, whose type checks are stricter.
FUZZ_SECONDS ?= 120
FUZZ_RUN := $(PY) -m fuzz
fuzz: $(STAMP) compile
	WEFT_PURE=1 $(PY) -m pip install -q -e '.[test,fuzz]'
	@mkdir -p fuzz/findings .cache/fuzz/http1 .cache/fuzz/config .cache/fuzz/h2 .cache/fuzz/h2core .cache/fuzz/gateway
	cp -n tests/fuzz/http1/* .cache/fuzz/http1/ 2>/dev/null || true
	cp -n tests/fuzz/config/* .cache/fuzz/config/ 2>/dev/null || true
	cp -n tests/fuzz/gateway/* .cache/fuzz/gateway/ 2>/dev/null || true
	for h in http1_forward:http1 h2_request:h2 h2_core:h2core config:config gateway:gateway; do \
	  WEFT_PURE=1 $(FUZZ_RUN).$${h%%:*} -max_total_time=$(FUZZ_SECONDS) -timeout=10 -print_final_stats=1 \
	    -artifact_prefix=fuzz/findings/ .cache/fuzz/$${h##*:} || exit 1; \
	  $(FUZZ_RUN).$${h%%:*} -runs=0 -artifact_prefix=fuzz/findings/ .cache/fuzz/$${h##*:} || exit 1; done
	@seed=$$(od -An -N2 -tu2 /dev/urandom | tr -d ' '); echo "HTTP/2 frame sequences, seed $$seed (WEFT_H2_SEED=$$seed to replay)"; \
	  WEFT_H2_SEED=$$seed WEFT_H2_SEQUENCES=$$(( $(FUZZ_SECONDS) * 50 )) $(PY) -m pytest -q -p no:cacheprovider tests/integration/test_h2_frames.py
