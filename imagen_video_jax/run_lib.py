"""What the training and distillation binaries share around their steps.

`train.py` and `distill.py` both run under `main_of` (signals, one-line errors,
pending saves awaited on every exit), prepare the workdir and clu's writer,
place the frozen text encoder, report host metrics (means, per-logSNR bucket
losses, speed, TFLOP/s and MFU from the compiled step's cost analysis) and
agree across hosts when to stop.

Exit status: 0 when the run finished, 1 on an error (one line in the log),
130 after SIGINT (Ctrl-C) and 143 after SIGTERM (preemption), whether the
signal came in the loop (the step is saved first) or during start-up (nothing
new to save: the process exits at once).
"""

import contextlib
import glob
import logging as std_logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags, logging
from clu import metric_writers

from imagen_video_jax import (
  checkpointing,
  config_utils,
  distill_lib,
  files,
  leases,
  optimizers,
  sharding,
  train_lib,
)
from imagen_video_jax.models import stage_model, text_encoder

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


def memory_per_chip(compiled: Any) -> dict[str, float]:
  """The compiled program's bytes per chip: argument, temporary, output, total."""
  m = compiled.memory_analysis()
  out = dict(
    argument=float(m.argument_size_in_bytes),
    temporary=float(m.temp_size_in_bytes),
    output=float(m.output_size_in_bytes),
    alias=float(m.alias_size_in_bytes),
  )
  # Donated (aliased) outputs reuse their arguments' buffers.
  out["total"] = out["argument"] + out["temporary"] + out["output"] - out["alias"]
  return out


def peak_flops_of(device_kind: str) -> float:
  """The table's peak FLOP/s of a device kind, first match (0 unknown)."""
  return next((f for name, f in PEAK_FLOPS if name in device_kind), 0.0)


def compiled_flops(compiled: Any) -> float:
  """FLOPs of one call of a compiled (per-device SPMD) program; 0 if unknown."""
  cost = compiled.cost_analysis()
  if isinstance(cost, list | tuple):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", 0.0))


# --------------------------------------------------------------------------- #
# Exits: signals, errors, pending saves.
# --------------------------------------------------------------------------- #
class Signals:
  """SIGINT (Ctrl-C) and SIGTERM (a preemption notice) of a training binary.

  Before `loop_started` a signal exits the process at once with 128 + signum:
  start-up (restore, compile) made nothing a save would keep, and a compile
  can take minutes. In the loop the handler only records it; `stop()` turns
  true on every host at the next step, the loop saves and returns `status`
  (130 or 143). A second signal exits at once.
  """

  def __init__(self):
    self.signum, self.looping, self.stopped = None, False, False
    self.at_exit: list[Callable[[], None]] = []  # Run before an immediate exit.

  def install(self) -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
      signal.signal(signum, self._handle)

  def _handle(self, signum: int, frame: Any) -> None:
    del frame
    name = signal.Signals(signum).name
    if not self.looping or self.signum is not None:
      logging.warning(
        "%s: nothing new to save; exiting with status %d.", name, 128 + signum
      )
      for callback in self.at_exit:  # The workdir's lease, given back.
        try:
          callback()
        except Exception as e:  # noqa: BLE001 - exiting anyway.
          logging.error("%s", e)
      logging.flush()
      os._exit(128 + signum)  # Compiling threads would hold a normal exit.
    logging.warning("%s: saving at the next step, then exiting.", name)
    self.signum = signum

  def loop_started(self) -> None:
    self.looping = True

  def stop(self) -> bool:
    """True from the step at which any host has seen a signal (all agree)."""
    self.stopped = self.stopped or sharding.any_process(self.signum is not None)
    return self.stopped

  @property
  def status(self) -> int:
    """0, or 128 + the signal (SIGTERM on a host that saw none) after a stop."""
    return 128 + (self.signum or signal.SIGTERM) if self.stopped else 0


SIGNALS = Signals()  # Signals are per process.
# Errors of bad input or of the environment (a full disk, max_bad_steps, a
# failed save): one line each. Other exceptions are bugs and keep their traceback.
REPORTED_ERRORS = (ValueError, OSError, RuntimeError)


def _quiet_closed_loop(unraisable: Any) -> None:
  """Drops orbax's 'Event loop is closed' after a failed read or save.

  When one array read or write fails, orbax closes its asyncio loop while
  tensorstore still completes the others; each completion then raises this in
  a tensorstore thread, as an unraisable exception: tens of tracebacks after
  the one error that matters. Any other unraisable exception is printed.
  """
  e = unraisable.exc_value
  if isinstance(e, RuntimeError) and str(e) == "Event loop is closed":
    return
  sys.__unraisablehook__(unraisable)


def main_of(
  binary: Callable[[list[str], contextlib.ExitStack], int | None],
  *,
  signals: bool = True,
) -> Callable[[list[str]], int]:
  """`binary(argv, exits)` as absl's main, returning the exit status.

  `binary` enters what must close on every exit into `exits` (the
  checkpointer, whose close waits for pending saves; the metric writer). A
  REPORTED_ERRORS error is logged as one line, after `exits` has closed, and
  gives status 1 (its traceback is logged at --verbosity=1); `signals`
  installs `SIGNALS`.
  """

  def main(argv: list[str]) -> int:
    if signals:
      SIGNALS.install()
    sys.unraisablehook = _quiet_closed_loop
    try:
      with contextlib.ExitStack() as exits:
        return binary(argv, exits) or 0
    except REPORTED_ERRORS as e:
      # The traceback goes to the log at --verbosity=1 (-v 1), the line always.
      logging.debug("%s", traceback.format_exc())
      logging.error("%s: %s", type(e).__name__, " ".join(str(e).split())[:2000])
      # What orbax's tasks left unretrieved is this error again, at exit.
      std_logging.getLogger("asyncio").setLevel(std_logging.CRITICAL)
      logging.flush()
      sys.stderr.flush()
      return 1
    except KeyboardInterrupt:  # Only without `signals`.
      logging.error("Interrupted.")
      return 128 + signal.SIGINT

  return main


def define_process_flags() -> Callable[[], None]:
  """Defines a binary's process flags; returns what initialises jax.distributed.

  --multihost lets jax.distributed.initialize() detect the cluster (a TPU pod,
  launch/tpu.sh); --coordinator_address, --num_processes and --process_id
  name it explicitly (launch/multihost.sh). Call at a binary's module level.
  """
  multihost = flags.DEFINE_bool(
    "multihost", False, "jax.distributed.initialize() with cluster auto-detection."
  )
  coordinator = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (explicit multi-process)."
  )
  num_processes = flags.DEFINE_integer("num_processes", None, "Number of processes.")
  process_id = flags.DEFINE_integer("process_id", None, "This process's index.")

  def initialize() -> None:
    if coordinator.value or multihost.value:
      jax.distributed.initialize(
        coordinator.value, num_processes.value, process_id.value
      )

  return initialize


def open_workdir(
  config: ml_collections.ConfigDict, workdir: str, exits: contextlib.ExitStack
) -> leases.Lease:
  """Checks `workdir` can hold this run, then takes its lease (leases.py).

  Only the lease is written: `exits` gives it back on every exit, and removes
  the workdir again if this run created it and a failed start left it empty.

  Raises:
    ValueError: naming the workdir and why it cannot hold this run
      (checkpointing.check_workdir), or the run holding it.
  """
  created = not files.is_url(workdir) and not os.path.exists(workdir)
  checkpointing.check_workdir(workdir, config)
  if created:
    exits.callback(_remove_if_empty, workdir)
  lease, error = leases.Lease(workdir), None
  if jax.process_index() == 0:  # One lease for the job, whatever its hosts.
    try:
      lease.acquire()
    except leases.WorkdirBusyError as e:
      error = e
  if sharding.any_process(error is not None):
    raise error or leases.WorkdirBusyError(
      f"Workdir {workdir!r} is in use by another run (process 0's log names it)."
    )
  exits.callback(lease.release)
  SIGNALS.at_exit.append(lease.give_back)
  return lease


def _remove_if_empty(folder: str) -> None:
  if jax.process_index() == 0 and os.path.isdir(folder) and not os.listdir(folder):
    os.rmdir(folder)


def check_lease(lease: leases.Lease, step: int) -> None:
  """Raises before the save of `step` if another run took the workdir's lease.

  Raises:
    RuntimeError: naming the workdir and the run that took it (all hosts).
  """
  lost = jax.process_index() == 0 and lease.lost is not None
  if sharding.any_process(lost):
    holder = leases.describe(lease.lost) if lease.lost else "see process 0's log"
    raise RuntimeError(
      f"Workdir {lease.workdir!r} was taken by another run ({holder}); stopping"
      f" without saving step {step}, so as not to overwrite its checkpoints."
    )


def start_writing(
  config: ml_collections.ConfigDict, workdir: str, exits: contextlib.ExitStack
) -> tuple[Any, Signals]:
  """Writes config.json and opens clu's writer: the run is known to start.

  Called once the data is open and the state built or restored, so that a
  failed start leaves no config.json (which would lock the workdir to its
  network) and no event file. The writer is closed by `exits` on every exit.
  """
  checkpointing.write_config(workdir, config)
  writer = metric_writers.create_default_writer(
    workdir, just_logging=jax.process_index() > 0
  )
  exits.callback(writer.close)
  return writer, SIGNALS


def frozen_text_encoder(
  config: ml_collections.ConfigDict,
  mesh: jax.sharding.Mesh,
  rules: Any,
  *,
  abstract: bool = False,
) -> tuple[Callable[..., jax.Array] | None, Any, Any]:
  """The frozen T5 (paper Sec. 2), its params placed by their logical axes.

  Args:
    config: the stage config (`config.text`, `config.dtype`).
    mesh: the device mesh.
    rules: logical axis rules.
    abstract: params as `jax.ShapeDtypeStruct`s carrying their shardings, no
      weights read or drawn (an ahead-of-time compile, as benchmarks.compile).

  Returns:
    (apply, params, shardings); all None when the data holds precomputed
    embeddings (config.text.precomputed).
  """
  if config.text.precomputed:
    return None, None, None
  config_utils.check_compute(config)
  encoder = None
  if abstract:
    _, model = text_encoder.make_model(config.text, dtype=config.dtype)
  else:
    encoder = text_encoder.TextEncoder.from_config(config.text, dtype=config.dtype)
    model = encoder.model
  ones = jnp.ones((1, 1), jnp.int32)
  boxed = jax.eval_shape(model.init, jax.random.key(0), ones, ones > 0)["params"]
  sharding.check_undivided(boxed, mesh, rules, error=config.mesh.error_on_undivided)
  shardings = sharding.logical_shardings(boxed, mesh, rules)

  def apply(params: Any, tokens: jax.Array, mask: jax.Array) -> jax.Array:
    return model.apply({"params": params}, tokens, mask)

  if encoder is None:
    params = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      nn.meta.unbox(boxed),
      shardings,
    )
    return apply, params, shardings
  return apply, jax.device_put(encoder.params, shardings), shardings


def _abstract_state(
  config: ml_collections.ConfigDict, init_fn: Callable, mesh: Any, rules: Any
) -> tuple[Any, Any]:
  """The state's ShapeDtypeStructs and shardings, from init_fn(key(config.seed))."""
  return sharding.abstract_state(
    init_fn,
    jax.random.key(config.seed),
    mesh,
    rules,
    error_on_undivided=config.mesh.error_on_undivided,
  )


class TrainStep(NamedTuple):
  """train.py's step jitted for a mesh, and the state it runs on."""

  step: Any  # jit of (state, batch, text_params) -> (state, metrics), state donated.
  init_fn: Callable[[jax.Array], Any]  # rng -> boxed initial state.
  abstract_state: Any  # ShapeDtypeStructs of the state, with their shardings.
  state_shardings: Any  # NamedShardings of the state.


def jit_train_step(
  config: ml_collections.ConfigDict,
  mesh: jax.sharding.Mesh,
  rules: Any,
  text_apply: Callable[..., jax.Array] | None,
  text_shardings: Any,
) -> TrainStep:
  """The stage's train step, jitted with the state's shardings (train.py's).

  The state {step, params, opt_state, ema_params} is placed by the params'
  logical axes; the step is traced under the mesh and the rules so that the
  models' activation constraints take effect, and donates its state.
  """
  model = stage_model.make_model(config)
  tx, lr_fn = optimizers.make_optimizer(config.optim, config.total_steps)
  init_fn = train_lib.make_init_fn(config, model, tx)
  abstract_state, state_shardings = _abstract_state(config, init_fn, mesh, rules)
  step_fn = train_lib.make_train_step(
    config, model, tx, lr_fn, text_apply, sharding.batch_sharding(mesh, rules)
  )  # The batch's layout: the inputs' too (input_pipeline loads it so).
  step = jax.jit(
    sharding.under_rules(step_fn, mesh, rules),
    in_shardings=(
      state_shardings,
      sharding.batch_sharding(mesh, rules),
      text_shardings,
    ),
    out_shardings=(
      state_shardings,
      jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),
    ),
    donate_argnums=(0,),
  )
  return TrainStep(step, init_fn, abstract_state, state_shardings)


class DistillSteps(NamedTuple):
  """distill.py's steps jitted for a mesh, and the state they run on.

  `steps` maps a round kind (distill_lib.KINDS) to the jit of (state, batch,
  text_params, round_start, round_steps) -> (state, metrics); `start_round`
  is the jit of (state, teacher params) -> state. Both donate the state. The
  other fields are TrainStep's.
  """

  steps: dict[str, Any]
  start_round: Any
  init_fn: Callable[[jax.Array], Any]
  abstract_state: Any
  state_shardings: Any


def jit_distill_steps(
  config: ml_collections.ConfigDict,
  mesh: jax.sharding.Mesh,
  rules: Any,
  text_apply: Callable[..., jax.Array] | None,
  text_shardings: Any,
) -> DistillSteps:
  """The student's steps, jitted with the state's shardings (distill.py's).

  `config` is the student's (distill_lib.student_config). The state {step,
  params, opt_state, ema_params, teacher_params} is placed by the params'
  logical axes; each round kind has its own optimizer (the same state, its own
  schedule length). Steps are traced under the mesh and the rules, and donate
  their state.
  """
  model = stage_model.make_model(config)
  txs = {
    "guidance": optimizers.make_optimizer(
      config.distill.optim, max(config.distill.guidance_steps, 1)
    ),
    "halving": optimizers.make_optimizer(
      config.distill.optim, max(config.distill.round_steps, 1)
    ),
  }
  tx = txs["halving"][0]  # Both build the same optimizer state.
  train_init = train_lib.make_init_fn(config, model, tx)

  def init_fn(rng):
    state = train_init(rng)
    return dict(state, teacher_params=state["params"])

  abstract_state, state_shardings = _abstract_state(config, init_fn, mesh, rules)
  start_round = jax.jit(
    distill_lib.make_start_fn(tx),
    in_shardings=(state_shardings, state_shardings["params"]),
    out_shardings=state_shardings,
    donate_argnums=(0,),
  )
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  steps = {
    kind: jax.jit(
      sharding.under_rules(
        distill_lib.make_distill_step(
          config,
          model,
          *txs[kind],
          kind,
          text_apply,
          sharding.batch_sharding(mesh, rules),
        ),
        mesh,
        rules,
      ),
      in_shardings=(
        state_shardings,
        sharding.batch_sharding(mesh, rules),
        text_shardings,
        replicated,
        replicated,
      ),
      out_shardings=(state_shardings, replicated),
      donate_argnums=(0,),
    )
    for kind in distill_lib.KINDS
  }
  return DistillSteps(steps, start_round, init_fn, abstract_state, state_shardings)


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
