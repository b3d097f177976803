#!/usr/bin/env bash
# The project's test command: venv, install, lint, tests (8 simulated devices).
#   bash launch/test.sh            # everything (what CI runs)
#   bash launch/test.sh -m "not slow"   # the quick loop; extra args go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/venv.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# XLA's CPU backend at -O0: the tests are bound by compiles of tiny models, which
# it makes ~25% faster (a runlocal training run 59 -> 43 s); what they assert does
# not depend on it (the binaries, the demo and benchmarks keep the default).
export XLA_FLAGS="--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0 ${XLA_FLAGS:-}"
# On the CPU, even with libtpu installed (the test extra: benchmarks.compile
# asks it for TPU topologies explicitly).
export JAX_PLATFORMS=cpu
# No huge pages here (launch/demo.sh sets them for training): the tests' many
# small compiles ran ~6% slower with them (docs/CPU.md#huge-pages-for-xlas-temporaries).
# TEST_WORKERS=2 runs two xdist workers (the tests that load libtpu share one, as
# only one process may hold it); serial by default: on 2 cores the workers' training
# subprocesses ran past their timeouts.
exec .venv/bin/python -m pytest -q -n "${TEST_WORKERS:-0}" --dist loadgroup \
  --durations=15 "$@"
