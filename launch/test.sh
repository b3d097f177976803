#!/usr/bin/env bash
# The project's test command: venv, install, lint, tests (8 simulated devices).
#   bash launch/test.sh            # everything (what CI runs)
#   bash launch/test.sh -m "not slow"   # the quick loop; extra args go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/venv.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# XLA's CPU backend at -O0, on its older loop emitters rather than the new fusion
# emitters, its LLVM code generated in one piece and its HLO scheduled for memory
# rather than concurrency: the tests run tiny models and are bound by compiles,
# which these make ~25%, 7-30% and ~13% faster (docs/CPU.md#the-tests-at--o0); what
# they assert does not depend on it (the binaries, the demo and benchmarks keep the
# defaults).
export XLA_FLAGS="--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0 \
--xla_cpu_use_fusion_emitters=false --xla_cpu_parallel_codegen_split_count=1 \
--xla_cpu_enable_concurrency_optimized_scheduler=false ${XLA_FLAGS:-}"
# On the CPU, even with libtpu installed (the test extra: benchmarks.compile
# asks it for TPU topologies explicitly).
export JAX_PLATFORMS=cpu
# No huge pages here (launch/demo.sh sets them for training): the tests' many
# small compiles ran ~6% slower with them (docs/CPU.md#huge-pages-for-xlas-temporaries).
# Two xdist workers (TEST_WORKERS=0: serial): a serial run keeps 1.5 of the 2 cores
# busy. Tests that share a module fixture's training run, and those that load libtpu
# (one process may hold it), are each one xdist_group, run by one worker.
exec .venv/bin/python -m pytest -q -n "${TEST_WORKERS:-2}" --dist loadgroup \
  --durations=15 "$@"
