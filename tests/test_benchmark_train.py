"""benchmarks/train.py runs as its README command does and prints its table."""

import subprocess
import sys

import pytest


@pytest.mark.slow  # A stage compiled in a fresh process: about a minute.
def test_train_benchmark_prints_a_row_per_stage_and_program():
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "imagen_video_jax.benchmarks.train",
      "--variant=runlocal",
      "--stages=base",
      "--steps=1",
    ],
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [line.split(" | ") for line in out.stdout.splitlines() if " | " in line]
  header, (row,) = rows[0], rows[1:]
  assert header[:2] == ["stage", "program"] and row[:2] == ["base", "train"]
  values = dict(zip(header, row))
  assert float(values["steps/s"]) > 0 and float(values["step MiB"]) > 0
  assert int(values["batch"]) > 0


_BENCHMARK_HLO = """
import hashlib, jax
from imagen_video_jax import programs, sharding
from imagen_video_jax.benchmarks import train as bench
config = bench.stage_config("base", "runlocal", "guidance", batch=8)
mesh = sharding.make_mesh((-1, 1, 1))
rules = sharding.logical_rules(config.logical_axis_rules)
text = programs.frozen_text_encoder(config, mesh, rules)
step, init_fn, shardings, extra = bench.jit_step(config, "guidance", mesh, rules, *text[::2])
state, _ = sharding.abstract_state(init_fn, jax.random.key(config.seed), mesh, rules)
lowered = step.lower(state, bench.synthetic_batch(config, mesh, rules), text[1], *extra)
print(hashlib.sha256(lowered.as_text().encode()).hexdigest())
"""


def test_the_distillation_benchmark_lowers_distill_pys_step():
  """benchmarks/train.py's guidance step is distill.py's program: its lowering
  equals the binary's (programs.jit_distill_steps on the input pipeline's batch
  layout), in a process of its own (the benchmark's flags)."""
  import hashlib

  import jax

  from imagen_video_jax import config_utils, distill_lib, programs, sharding, train_lib

  config = config_utils.load_config("configs/base.py:runlocal")
  config.batch_size, config.distill.teacher = 8, "benchmark"
  config = distill_lib.student_config(config)
  mesh = sharding.make_mesh((-1, 1, 1))  # The benchmark's mesh.
  rules = sharding.logical_rules(config.logical_axis_rules)
  text_apply, text_params, text_shardings = programs.frozen_text_encoder(
    config, mesh, rules
  )
  d = programs.jit_distill_steps(config, mesh, rules, text_apply, text_shardings)
  batch = train_lib.batch_shapes(config, 8, sharding.batch_sharding(mesh, rules))
  scalar = jax.ShapeDtypeStruct((), "int32")
  lowered = d.steps["guidance"].lower(
    d.abstract_state, batch, text_params, scalar, scalar
  )
  out = subprocess.run(
    [sys.executable, "-c", _BENCHMARK_HLO],
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  binary = hashlib.sha256(lowered.as_text().encode()).hexdigest()
  assert out.stdout.split()[-1] == binary
