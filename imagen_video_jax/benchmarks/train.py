r"""Throughput and memory of each demo stage's train and distillation steps.

  python -m imagen_video_jax.benchmarks.train                      # demo, f32
  python -m imagen_video_jax.benchmarks.train --dtype=bfloat16 --batch=64
  python -m imagen_video_jax.benchmarks.train --programs=train,guidance,halving

Builds the stage's model, optimizer, sharded state and step with the binaries'
own functions (`programs.jit_train_step`, `programs.jit_distill_steps`; mesh
(-1, 1, 1) over all local devices), times `--steps` calls of the jitted,
state-donating step on a synthetic batch, and prints steps/s, examples/s,
TFLOP/s per device (from the compiled step's cost analysis), MFU where the
device's peak is known, the compiled step's memory per device and the
allocator's peak (GPU/TPU). `guidance` and `halving` are distill.py's steps
(phase 1 and a phase 2 halving round) on the stage's student.
"""

import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags

from imagen_video_jax import (
  config_utils,
  distill_lib,
  programs,
  reporting,
  sharding,
  train_lib,
)
from imagen_video_jax.benchmarks import util

_STAGES = flags.DEFINE_list("stages", ["base", "tsr1", "ssr1"], "Stage configs.")
_VARIANT = flags.DEFINE_string("variant", "demo", "Config variant.")
_BATCH = flags.DEFINE_integer("batch", 0, "Global batch (0 = the config's).")
_DTYPE = flags.DEFINE_string("dtype", "", "Compute dtype override (bfloat16).")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps after the warm-up step.")
_PROGRAMS = flags.DEFINE_list(
  "programs", ["train"], "Any of train, guidance, halving (distill.py's steps)."
)


def stage_config(
  stage: str, variant: str, program: str, batch: int = 0, dtype: str = ""
) -> ml_collections.ConfigDict:
  """configs/<stage>.py:<variant> with the flags' overrides; the student's for
  the distillation programs (random weights stand in for the teacher)."""
  config = config_utils.load_config(f"configs/{stage}.py:{variant}")
  if batch:
    config.batch_size = batch
  if dtype:
    config.dtype = dtype
  if program != "train":
    config.distill.teacher = "benchmark"  # Not read: random weights.
    config = distill_lib.student_config(config)
  return config


def jit_step(
  config: ml_collections.ConfigDict,
  program: str,
  mesh: jax.sharding.Mesh,
  rules: Any,
  text_apply: Callable[..., jax.Array] | None,
  text_shardings: Any,
) -> tuple[Any, Callable[[jax.Array], Any], Any, tuple[np.int32, ...]]:
  """`program`'s jitted step as its binary builds it.

  Returns:
    (step, init_fn, state_shardings, extra): the step is called as
    step(state, batch, text_params, *extra); a distillation step's extra
    arguments are a halving round's start and step count.
  """
  if program == "train":  # train.py's step.
    step, init_fn, _, shardings = programs.jit_train_step(
      config, mesh, rules, text_apply, text_shardings
    )
    return step, init_fn, shardings, ()
  if program not in distill_lib.KINDS:
    raise ValueError(
      f"--programs: {program!r} is none of train, {', '.join(distill_lib.KINDS)}."
    )
  # distill.py's steps, on a state holding the teacher's params too.
  d = programs.jit_distill_steps(config, mesh, rules, text_apply, text_shardings)
  extra = (np.int32(0), np.int32(config.distill.final_sampling_steps))
  return d.steps[program], d.init_fn, d.state_shardings, extra


def benchmark(stage: str, program: str = "train") -> dict[str, float]:
  """Times `program`'s step of configs/<stage>.py:<variant>."""
  config = stage_config(stage, _VARIANT.value, program, _BATCH.value, _DTYPE.value)
  mesh = sharding.make_mesh((-1, 1, 1))
  rules = sharding.logical_rules(config.logical_axis_rules)
  sharding.check_batch_size(config.batch_size, mesh, rules)
  text_apply, text_params, text_shardings = programs.frozen_text_encoder(
    config, mesh, rules
  )
  step_fn, init_fn, shardings, extra = jit_step(
    config, program, mesh, rules, text_apply, text_shardings
  )
  state = sharding.sharded_init(init_fn, jax.random.key(config.seed), shardings)
  batch = synthetic_batch(config, mesh, rules)
  compiled = step_fn.lower(state, batch, text_params, *extra).compile()
  flops = reporting.compiled_flops(compiled)
  state, metrics = compiled(state, batch, text_params, *extra)  # Warm-up.
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(_STEPS.value):
    state, metrics = compiled(state, batch, text_params, *extra)
  jax.block_until_ready((state, metrics))
  seconds = (time.perf_counter() - start) / _STEPS.value
  peak = reporting.peak_flops_per_device(config)
  tflops = flops / seconds / 1e12
  return dict(
    steps_per_sec=1.0 / seconds,
    examples_per_sec=config.batch_size / seconds,
    tflops_per_device=tflops,
    mfu=tflops * 1e12 / peak if peak else float("nan"),
    step_memory_mib=util.memory_per_chip(compiled)["total"] / 2**20,
    # The allocator's peak since start (GPU/TPU; cumulative over stages).
    device_peak_mib=(jax.devices()[0].memory_stats() or {}).get(
      "peak_bytes_in_use", float("nan")
    )
    / 2**20,
    params_m=sum(x.size for x in jax.tree.leaves(state["params"])) / 1e6,
    batch=config.batch_size,
  )


def synthetic_batch(
  config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, rules: Any
) -> dict[str, jax.Array]:
  """A clip batch of the config's global size, laid out as the steps take it."""
  return sharding.global_batch(
    train_lib.synthetic_batch(config, config.batch_size), mesh, rules
  )


def main(argv):
  del argv
  device = jax.devices()[0]
  print(f"{jax.device_count()} x {device.device_kind} ({device.platform})")
  header = (
    "stage", "program", "dtype", "batch", "params M", "steps/s", "examples/s",
    "TFLOP/s/dev", "MFU", "step MiB", "device peak MiB",
  )  # fmt: skip
  print(" | ".join(header))
  for stage in _STAGES.value:
    for program in _PROGRAMS.value:
      r = benchmark(stage, program)
      print(
        f"{stage} | {program} | {_DTYPE.value or 'config'} | {r['batch']} | {r['params_m']:.2f} | "
        f"{r['steps_per_sec']:.3f} | {r['examples_per_sec']:.2f} | "
        f"{r['tflops_per_device']:.4f} | {r['mfu']:.3f} | "
        f"{r['step_memory_mib']:.0f} | {r['device_peak_mib']:.0f}",
        flush=True,
      )


if __name__ == "__main__":
  app.run(main)
