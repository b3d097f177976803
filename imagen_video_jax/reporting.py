"""The training binaries' host metrics, written by clu and read back.

`Reporter` writes, every `config.log_every` steps, the means of loss and grad
norm and the per-logSNR-bucket losses (`summarize`, `bucket_names`), the
learning rate, examples/s, TFLOP/s per device from the compiled step's cost
analysis (`compiled_flops`) and MFU against the device's peak (`PEAK_FLOPS`).
`logged_scalars` reads a scalar back from a run's event files.
"""

import glob
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from imagen_video_jax import train_lib

# Dense bf16 peak FLOP/s per device, by substring of `jax.Device.device_kind`.
PEAK_FLOPS = (
  ("TPU v6", 918e12),
  ("TPU v5 lite", 197e12),  # v5e.
  ("TPU v5e", 197e12),
  ("TPU v5", 459e12),  # v5p ('TPU v5' or 'TPU v5p').
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
  return peak_flops_of(jax.devices()[0].device_kind)


def peak_flops_of(device_kind: str) -> float:
  """The table's peak FLOP/s of a device kind, first match (0 unknown)."""
  return next((f for name, f in PEAK_FLOPS if name in device_kind), 0.0)


def compiled_flops(compiled: Any) -> float:
  """FLOPs of one call of a compiled (per-device SPMD) program; 0 if unknown."""
  cost = compiled.cost_analysis()
  if isinstance(cost, list | tuple):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", 0.0))


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


def logged_scalars(workdir: str, tag: str, files: Any = None) -> dict[int, float]:
  """step -> `tag`'s value, read back from the run's TensorBoard event files.

  Values are exact (float32). A step logged by several runs (after a kill and
  a restart) keeps the value of the newest file.
  """
  from tensorboard.backend.event_processing import event_file_loader
  from tensorboard.util import tensor_util

  out = {}
  for path in sorted(files or glob.glob(os.path.join(workdir, "events.out.*"))):
    for event in event_file_loader.EventFileLoader(path).Load():
      for value in event.summary.value:
        if value.tag == tag:
          out[event.step] = float(tensor_util.make_ndarray(value.tensor))
  return out
