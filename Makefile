# scorefleet developer commands. `make test` needs only the Rust toolchain and
# Python 3: it installs the pinned AWS emulator into .venv (requirements.txt),
# starts it on a free port of 127.0.0.1, runs every test and stops it again.
#
#   make test         unit, property, doc and emulator tests (ministack)
#   make test-moto    the same against moto
#   make fmt | lint   rustfmt; rustfmt --check + clippy -D warnings
#   make demo         the demo: local emulator, bundled model, sample archive, summary
#   make demo-ci      a smaller demo on the debug build, asserting on its summary
#   make chaos-ci     short bench/chaos runs on the debug build, both dedup modes (0 lost, 0 double outcomes, 0 stranded)
#   make validate-deploy  offline lint/schema checks of deploy/ and docker-compose.yml (~5 s warm)
#   make docs         regenerate docs/configuration.md from the binaries' --help
#   make docs-check   fail if docs/configuration.md is stale (CI)
#   make report-screenshot  a PNG of the demo's report, drawn by headless Chromium
#   make test-wgpu    the ONNX tests and an ONNX worker on burn-wgpu (a GPU, or lavapipe on the CPU)

SHELL := bash
CARGO ?= cargo

.PHONY: test-wgpu test test-moto nextest fmt lint validate-deploy demo demo-ci chaos-ci bins docs docs-check report-screenshot

# One build of the binaries for the demo, demo-ci, chaos-ci and the docs: the
# debug profile `make test` uses (dependencies optimised), with the whole
# workspace selected so every dependency resolves to the same features as in
# the test build. `make demo` then `make test` compile the dependency graph
# once.
bins:
	$(CARGO) build --workspace --bins

# Doc tests need no emulator; the nextest build comes first so the emulator
# does not idle through compilation.
test: validate-deploy nextest
	$(CARGO) test --workspace --doc
	$(CARGO) nextest run --workspace --no-run
	SCOREFLEET_REQUIRE_EMULATOR=1 scripts/with-stack.sh $(CARGO) nextest run --workspace --no-fail-fast

# Everything else (venv, emulator, queues, table, bucket, archive) is set up
# by the scripts.
demo: bins
	scripts/with-stack.sh scripts/demo.sh

# 300 digits and a check of the summary and of the report's thumbnails.
demo-ci: bins
	DEMO_COUNT=300 DEMO_CHECK=1 DEMO_OUT=out/demo-ci scripts/with-stack.sh scripts/demo.sh

# bench/chaos, shortened for CI: 3,000 jobs, 3 debug-build workers, a kill -9
# every second, a SIGTERM every 2 s, a 1 s network cut every 3 s, no
# fault-free baseline; once per dedup mode (claim, finish-only), then once
# more as 300 jobs of ten images each (finish-only). Exits non-zero on any
# lost, doubly scored or stranded job, or when a run ended before every kind
# of fault happened.
CHAOS_TARGET_DIR = $(or $(CARGO_TARGET_DIR),target)
chaos-ci: bins
	for mode in claim finish-only; do \
	    BENCH_NO_BUILD=1 bench/chaos --jobs 3000 --unique 300 --workers 3 --kill-every 1 --term-every 2 \
	        --cut-every 3 --cut-seconds 1 --no-baseline --require-faults --timeout 600 --dedup $$mode \
	        --bin-dir $(CHAOS_TARGET_DIR)/debug --out out/chaos-ci-$$mode --json || exit 1; \
	done
	# Jobs of ten images: one receive brings a worker 10 jobs (100 images),
	# and every kill or SIGTERM of that worker costs each of them a delivery.
	# With a fault every ~2 s per worker, the last jobs of a run can spend the
	# default redrive limit (10) that way and end in the DLQ, which is the
	# designed end but not what this checks: the limit is 50 here.
	BENCH_NO_BUILD=1 bench/chaos --jobs 300 --images-per-job 10 --unique 300 --workers 3 --kill-every 1 --term-every 2 \
	    --cut-every 3 --cut-seconds 1 --no-baseline --require-faults --timeout 600 --dedup finish-only \
	    --max-receive-count 50 \
	    --bin-dir $(CHAOS_TARGET_DIR)/debug --out out/chaos-ci-multi --json

# burn-wgpu as the only backend (so every model, test and worker runs on it;
# the runner's CPU kernels stay off there): the light models, the ONNX-only
# networks against onnxruntime, and workers serving ONNX models end to end.
# Not in .ci/run: a separate build of the wgpu stack, and slow on lavapipe.
# (`mnist`: tests/onnx reads its digits with the model crate's MNIST reader.)
WGPU_FEATURES = --no-default-features --features wgpu
test-wgpu: nextest
	scripts/wgpu-setup.sh
	WGPU_BACKEND=vulkan $(CARGO) nextest run -p scorefleet-model $(WGPU_FEATURES) --features mnist --test onnx --test import --no-fail-fast
	WGPU_BACKEND=vulkan SCOREFLEET_REQUIRE_EMULATOR=1 scripts/with-stack.sh \
	    $(CARGO) nextest run -p scorefleet-worker $(WGPU_FEATURES) --test onnx_models --no-fail-fast

test-moto:
	SCOREFLEET_EMULATOR=moto $(MAKE) --no-print-directory test

# cargo-nextest is installed only when missing (CI caches ~/.cargo/bin).
nextest:
	@command -v cargo-nextest >/dev/null || $(CARGO) install cargo-nextest --locked

# hadolint, compose-spec schema, kustomize + kubernetes-validate + KEDA CRD
# schema, cfn-lint, parliament; see scripts/validate-deploy.sh.
validate-deploy:
	scripts/validate-deploy.sh

fmt:
	$(CARGO) fmt --all

docs: bins
	scripts/gen-config-docs.sh

docs-check: bins
	scripts/gen-config-docs.sh --check

# REPORT (default out/demo/report.html, from `make demo`) → REPORT with .png.
REPORT ?= out/demo/report.html
report-screenshot:
	scripts/report-screenshot.sh $(REPORT)

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Fuzz every cargo-fuzz target in fuzz/ for FUZZ_SECONDS (default 60) each;
# needs the nightly toolchain, installs cargo-fuzz when missing. Not part of
# `make test` or CI (see fuzz/README.md).
.PHONY: fuzz deny
fuzz:
	scripts/fuzz.sh

# The dependency audit (a step of .ci/run): cargo-deny advisories, bans,
# licenses, sources; advisories against the RustSec database when it can be
# fetched, else the snapshot in third_party/rustsec-advisory-db (see
# docs/security.md).
deny:
	scripts/deny.sh
