"""The binaries' run contract: exits, processes and the workdir.

`train.py` and `distill.py` run under `main_of` (signals, one-line errors,
pending saves awaited on every exit), initialise their processes
(`define_process_flags`), check and lease the workdir (`open_workdir`,
`check_lease`), write config.json, open clu's writer (`start_writing`) and
agree across hosts when to stop (`Signals.stop`). `sample.py`, `evaluate.py`
and `benchmarks.compile` run under `main_of` without signals. The programs the
binaries jit are `programs.py`'s; their metrics, `reporting.py`'s.

Exit status: 0 when the run finished, 1 on an error (one line in the log),
130 after SIGINT (Ctrl-C) and 143 after SIGTERM (preemption), whether the
signal came in the loop (the step is saved first) or during start-up (nothing
new to save: the process exits at once).
"""

import contextlib
import logging as std_logging
import os
import signal
import sys
import traceback
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
from absl import flags, logging
from clu import metric_writers

from imagen_video_jax import checkpointing, files, leases, sharding


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
