r"""Throughput and memory of each demo stage's train and distillation steps.

  python -m imagen_video_jax.benchmarks.train                      # demo, f32
  python -m imagen_video_jax.benchmarks.train --dtype=bfloat16 --batch=64
  python -m imagen_video_jax.benchmarks.train --programs=train,guidance,halving

Builds the stage's model, optimizer, sharded state and step with train.py's
function (mesh (-1, 1, 1) over all local devices), times `--steps` calls of the jitted,
state-donating train step on a synthetic batch, and prints steps/s,
examples/s, TFLOP/s per device (from the compiled step's cost analysis), MFU
where the device's peak is known, the compiled step's memory per device and
the allocator's peak (GPU/TPU). `guidance` and `halving` are distill.py's
steps (phase 1 and a phase 2 halving round) on the same stage, the student built
as distill.py builds it.
"""

import time

import jax
import numpy as np
from absl import app, flags

from imagen_video_jax import (
  config_utils,
  distill_lib,
  optimizers,
  run_lib,
  sharding,
  train_lib,
)
from imagen_video_jax.models import stage_model

_STAGES = flags.DEFINE_list("stages", ["base", "tsr1", "ssr1"], "Stage configs.")
_VARIANT = flags.DEFINE_string("variant", "demo", "Config variant.")
_BATCH = flags.DEFINE_integer("batch", 0, "Global batch (0 = the config's).")
_DTYPE = flags.DEFINE_string("dtype", "", "Compute dtype override (bfloat16).")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps after the warm-up step.")
_PROGRAMS = flags.DEFINE_list(
  "programs", ["train"], "Any of train, guidance, halving (distill.py's steps)."
)


def benchmark(stage: str, program: str = "train") -> dict[str, float]:
  """Times `program`'s step of configs/<stage>.py:<variant>."""
  config = config_utils.load_config(f"configs/{stage}.py:{_VARIANT.value}")
  if _BATCH.value:
    config.batch_size = _BATCH.value
  if _DTYPE.value:
    config.dtype = _DTYPE.value
  if program != "train":
    config.distill.teacher = "benchmark"  # Random weights stand in for it.
    config = distill_lib.student_config(config)
  mesh = sharding.make_mesh((-1, 1, 1))
  rules = sharding.logical_rules(config.logical_axis_rules)
  sharding.check_batch_size(config.batch_size, mesh, rules)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  text_apply, text_params, text_shardings = run_lib.frozen_text_encoder(
    config, mesh, rules
  )
  rng = jax.random.key(config.seed)
  if program == "train":  # train.py's step.
    step_fn, init_fn, _, shardings = run_lib.jit_train_step(
      config, mesh, rules, text_apply, text_shardings
    )
    extra = ()
  else:  # distill.py's steps, on a state holding the teacher's params too.
    model = stage_model.make_model(config)
    tx, lr_fn = optimizers.make_optimizer(config.distill.optim, config.total_steps)
    step_fn = distill_lib.make_distill_step(
      config,
      model,
      tx,
      lr_fn,
      program,
      text_apply,
      sharding.batch_sharding(mesh, rules),
    )
    extra = (np.int32(0), np.int32(config.distill.final_sampling_steps))
    train_init = train_lib.make_init_fn(config, model, tx)

    def init_fn(rng):
      state = train_init(rng)
      return dict(state, teacher_params=state["params"])

    _, shardings = sharding.abstract_state(init_fn, rng, mesh, rules)
    step_fn = jax.jit(
      sharding.under_rules(step_fn, mesh, rules),
      out_shardings=(shardings, replicated),
      donate_argnums=(0,),
    )
  state = sharding.sharded_init(init_fn, rng, shardings)
  batch = sharding.global_batch(
    train_lib.synthetic_batch(config, config.batch_size), mesh, rules
  )
  compiled = step_fn.lower(state, batch, text_params, *extra).compile()
  flops = run_lib.compiled_flops(compiled)
  state, metrics = compiled(state, batch, text_params, *extra)  # Warm-up.
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(_STEPS.value):
    state, metrics = compiled(state, batch, text_params, *extra)
  jax.block_until_ready((state, metrics))
  seconds = (time.perf_counter() - start) / _STEPS.value
  peak = run_lib.peak_flops_per_device(config)
  tflops = flops / seconds / 1e12
  return dict(
    steps_per_sec=1.0 / seconds,
    examples_per_sec=config.batch_size / seconds,
    tflops_per_device=tflops,
    mfu=tflops * 1e12 / peak if peak else float("nan"),
    step_memory_mib=run_lib.memory_per_chip(compiled)["total"] / 2**20,
    # The allocator's peak since start (GPU/TPU; cumulative over stages).
    device_peak_mib=(jax.devices()[0].memory_stats() or {}).get(
      "peak_bytes_in_use", float("nan")
    )
    / 2**20,
    params_m=sum(x.size for x in jax.tree.leaves(state["params"])) / 1e6,
    batch=config.batch_size,
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
