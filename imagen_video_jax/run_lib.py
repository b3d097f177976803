"""What the training and distillation binaries share around their steps.

`train.py` and `distill.py` both prepare the workdir and clu's writer, catch
SIGTERM, place the frozen text encoder, report host metrics (means, per-logSNR
bucket losses, speed, TFLOP/s and MFU from the compiled step's cost analysis)
and agree across hosts when to stop.
"""

import signal
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers
from jax.experimental import multihost_utils

from imagen_video_jax import checkpointing, sharding, train_lib
from imagen_video_jax.models import text_encoder

# Dense bf16 peak FLOP/s per device, by substring of `jax.Device.device_kind`.
PEAK_FLOPS = (
  ("TPU v6", 918e12),
  ("TPU v5p", 459e12),
  ("TPU v5", 197e12),  # v5e / 'TPU v5 lite'.
  ("TPU v4", 275e12),
  ("TPU v3", 123e12),
  ("H200", 989e12),
  ("H100", 989e12),
  ("A100", 312e12),
)


def bucket_names() -> list[str]:
  """Metric names of the buckets, e.g. 'loss_logsnr[-5,0)'."""
  e = train_lib.LOGSNR_BUCKETS
  return [f"loss_logsnr[{e[i]:g},{e[i + 1]:g})" for i in range(len(e) - 1)]


def summarize(history: list[dict[str, Any]]) -> dict[str, float]:
  """Means of loss and grad norm over host metrics of steps, and bucket losses."""
  if not history:
    return {}
  out = {k: float(np.mean([m[k] for m in history])) for k in ("loss", "grad_norm")}
  sums = np.sum([m["bucket_sums"] for m in history], 0)
  counts = np.sum([m["bucket_counts"] for m in history], 0)
  for name, s, c in zip(bucket_names(), sums, counts):
    if c:
      out[name] = float(s / c)
  return out


def peak_flops_per_device(config: ml_collections.ConfigDict) -> float:
  """config.peak_flops, else the table's entry for the device kind (0 unknown)."""
  if config.get("peak_flops"):
    return float(config.peak_flops)
  kind = jax.devices()[0].device_kind
  return next((f for name, f in PEAK_FLOPS if name in kind), 0.0)


def compiled_flops(compiled: Any) -> float:
  """FLOPs of one call of a compiled (per-device SPMD) program; 0 if unknown."""
  cost = compiled.cost_analysis()
  if isinstance(cost, list | tuple):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", 0.0))


def open_run(config: ml_collections.ConfigDict, workdir: str) -> tuple[Any, list]:
  """Prepares the workdir (config.json) and returns clu's writer and a SIGTERM flag.

  The flag is a list that SIGTERM appends to (a preemption notice): the loop
  saves and stops at the next step.
  """
  checkpointing.prepare_workdir(workdir, config)
  writer = metric_writers.create_default_writer(
    workdir, just_logging=jax.process_index() > 0
  )
  preempted = []
  signal.signal(signal.SIGTERM, lambda *_: preempted.append(True))
  return writer, preempted


def frozen_text_encoder(
  config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, rules: Any
) -> tuple[Callable[..., jax.Array] | None, Any, Any]:
  """The frozen T5 (paper Sec. 2), its params placed by their logical axes.

  Returns:
    (apply, params, shardings); all None when the data holds precomputed
    embeddings (config.text.precomputed).
  """
  if config.text.precomputed:
    return None, None, None
  encoder = text_encoder.TextEncoder.from_config(config.text, dtype=config.dtype)
  ones = jnp.ones((1, 1), jnp.int32)
  shardings = sharding.logical_shardings(
    jax.eval_shape(encoder.model.init, jax.random.key(0), ones, ones > 0)["params"],
    mesh,
    rules,
  )
  return encoder.apply, jax.device_put(encoder.params, shardings), shardings


class Reporter:
  """Host side of the metrics: skipped steps, means, speed, written by clu.

  Call once per step with the step's host metrics and the compiled program's
  FLOPs. Every `config.log_every` steps (and at the last) it writes the means
  of loss, grad norm and the per-logSNR-bucket losses, the learning rate,
  examples/s, TFLOP/s per device and MFU. Timing starts after the first
  (compiling) step.
  """

  def __init__(self, config: ml_collections.ConfigDict, writer: Any):
    self.config, self.writer = config, writer
    self.peak = peak_flops_per_device(config)
    self.history, self.bad_streak, self.bad_total = [], 0, 0
    self.t_last, self.steps_timed, self.flops_timed = None, 0, 0.0

  def __call__(self, step: int, metrics: dict[str, Any], flops: float) -> None:
    """Raises RuntimeError after config.max_bad_steps non-finite steps in a row."""
    config = self.config
    if metrics["finite"]:
      self.bad_streak = 0
      self.history.append(metrics)
    else:
      self.bad_streak, self.bad_total = self.bad_streak + 1, self.bad_total + 1
      logging.warning("Step %d: non-finite loss or gradient; update skipped.", step)
      if self.bad_streak >= config.max_bad_steps:
        raise RuntimeError(
          f"{self.bad_streak} non-finite steps in a row (config.max_bad_steps="
          f"{config.max_bad_steps}) at step {step}; stopping."
        )
    if self.t_last is None:  # Timing starts after a compiling step.
      self.t_last, self.steps_timed, self.flops_timed = time.perf_counter(), 0, 0.0
    else:
      self.steps_timed, self.flops_timed = (
        self.steps_timed + 1,
        self.flops_timed + flops,
      )
    if step % config.log_every == 0 or step == config.total_steps:
      out = summarize(self.history) | dict(
        bad_steps_total=self.bad_total, lr=float(metrics["lr"])
      )
      if self.steps_timed:
        dt = time.perf_counter() - self.t_last
        out["examples_per_sec"] = self.steps_timed * config.batch_size / dt
        out["tflops_per_device"] = self.flops_timed / dt / 1e12
        if self.peak:
          out["mfu"] = out["tflops_per_device"] * 1e12 / self.peak
        self.t_last, self.steps_timed, self.flops_timed = time.perf_counter(), 0, 0.0
      self.writer.write_scalars(step, out)
      self.history = []


def all_agree(flag: bool) -> bool:
  """True when any process says so (every host must stop on SIGTERM together)."""
  if jax.process_count() == 1:
    return flag
  return bool(multihost_utils.process_allgather(np.int32(flag)).max())
