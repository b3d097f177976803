"""Orbax checkpoints of a training run, with the data iterator's state.

Layout of a workdir:
  WORKDIR/config.json                   the stage config the run was started with
  WORKDIR/checkpoints/<step>/state      params, opt_state, step (sharded arrays)
  WORKDIR/checkpoints/<step>/ema_params EMA of the params (what sample.py loads)
  WORKDIR/checkpoints/<step>/data       JSON for all processes: the next global batch
  WORKDIR/checkpoints/<step>/meta       JSON: the stage the checkpoint belongs to

Saves are asynchronous and atomic (orbax writes to a temporary directory and
renames it), `keep_ckpts` are kept, checkpoints whose params are not finite are
never written. A damaged checkpoint (unreadable files) is moved, whole, to
WORKDIR/damaged_checkpoints/<step> and the one before it restored, so that the
run goes on and saves that step again; a checkpoint of another stage or
network is a mismatch, reported as such, and nothing is moved.
"""

import json
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from imagen_video_jax import checkpoint_io, config_utils, files, sharding


# --------------------------------------------------------------------------- #
# Workdir and its config.json.
# --------------------------------------------------------------------------- #
def stage_identity(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The keys identifying a stage (config_utils.STAGE_KEYS), as JSON values."""
  stage = json.loads(config.stage.to_json())  # Tuples as lists, as saved.
  return {k: stage.get(k) for k in config_utils.STAGE_KEYS}


def check_same_stage(saved: dict[str, Any], current: dict[str, Any], where: str):
  """Raises ValueError naming both stages if `saved` is not `current`.

  A key `saved` lacks (a checkpoint older than the key) is not compared.
  """
  keys = [k for k in config_utils.STAGE_KEYS if k in saved]
  saved = {k: saved[k] for k in keys}
  current = {k: current.get(k) for k in keys}
  if saved != current:
    raise ValueError(
      f"{where} is from stage {saved}, but the config is for stage {current}."
    )


def saved_config(
  workdir: str, config: ml_collections.ConfigDict, where: str
) -> dict[str, Any] | None:
  """WORKDIR/config.json as a dict, None if there is none.

  Raises:
    ValueError: naming `where` and both stages if it is not `config`'s stage.
  """
  path = checkpoint_io.absolute(workdir) / "config.json"  # gs:// too.
  if not path.is_file():
    return None
  saved = json.loads(path.read_text())
  for key in ("dtype", "remat"):  # Older workdirs copied config.dtype/remat here.
    saved.get("model", {}).pop(key, None)
  check_same_stage(saved["stage"], stage_identity(config), where)
  return saved


def prepare_workdir(workdir: str, config: ml_collections.ConfigDict) -> None:
  """`check_workdir`, then `write_config`."""
  check_workdir(workdir, config)
  write_config(workdir, config)


def check_workdir(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Checks that `workdir` can hold this run; writes nothing in it.

  The stage and network of its config.json (or, without one, the stage its
  checkpoints record) must be `config`'s, so must the global batch size and
  seed once it holds a checkpoint, and the folder must be writable (it is
  created if missing; a probe file is written and removed).

  Raises:
    ValueError: naming the workdir and both stages if it belongs to another
      stage, each differing key with both values if it holds another network,
      or the cause if it cannot be written.
  """
  where = f"Workdir {workdir!r}"
  saved = saved_config(workdir, config, where)
  if saved is not None:
    differ = config_utils.network_differences(saved, config)
    if differ:
      raise ValueError(
        f"{where} was trained with another network (config.json ->"
        f" this config): {'; '.join(differ)}. Resume with the saved values, or"
        " start the new network in a new --workdir."
      )
    differ = config_utils.data_order_differences(saved, config)
    if differ and latest_step(workdir) is not None:
      raise ValueError(
        f"{where} was trained with another global batch or seed (config.json ->"
        f" this config): {'; '.join(differ)}. A resume continues the run's data"
        " order, which they fix (hosts, devices and mesh may change); resume"
        " with the saved values, or start a new --workdir."
      )
  else:
    stage = checkpoints_stage(workdir)
    if stage is not None:
      check_same_stage(stage, stage_identity(config), f"{where} (its checkpoints)")
  try:
    files.check_writable(workdir)
  except OSError as e:
    raise ValueError(f"Workdir {workdir!r} is not writable: {e}") from e


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes WORKDIR/config.json (process 0), once the run is known to start."""
  if jax.process_index() == 0:
    files.write_text(os.path.join(workdir, "config.json"), config.to_json(indent=2))


def checkpoints_stage(workdir: str) -> dict[str, Any] | None:
  """The stage recorded in the newest readable checkpoint's meta; None if none."""
  if not (checkpoint_io.absolute(workdir) / "checkpoints").exists():
    return None
  with checkpoint_io.meta_manager(workdir) as manager:
    for step in sorted(manager.all_steps(), reverse=True):
      try:
        return checkpoint_io.read_meta(manager, step)["stage"]
      except checkpoint_io.DamagedCheckpointError:
        continue
  return None


# --------------------------------------------------------------------------- #
# The checkpoint manager.
# --------------------------------------------------------------------------- #
@jax.jit
def _all_finite(tree: Any) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


class Checkpointer:
  """Saves and restores a run's train state, EMA, data state and stage.

  A context manager: leaving it, by any exit, waits for the pending saves.
  """

  def __init__(
    self,
    workdir: str,
    *,
    stage: dict[str, Any],
    keep: int = 3,
    async_save: bool = True,
  ):
    self.directory = checkpoint_io.absolute(workdir) / "checkpoints"
    self.stage = dict(stage)
    self._last_saved, self._closed = None, False
    self.manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=False,  # The first save makes it: a failed start writes nothing.
        cleanup_tmp_directories=True,  # What a killed save left: never a checkpoint.
        enable_async_checkpointing=async_save,
      ),
      item_handlers={
        "state": ocp.PyTreeCheckpointHandler(),
        "ema_params": ocp.PyTreeCheckpointHandler(),
        "data": checkpoint_io.DataStateHandler(),
        "meta": ocp.JsonCheckpointHandler(),
      },
    )

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
      return
    try:  # The error in flight is the one to report; this one is logged.
      self.close()
    except Exception as e:  # noqa: BLE001
      logging.error("%s", e)

  def save(
    self,
    step: int,
    state: dict[str, Any],
    data_iterator: Any,
    meta: dict[str, Any] | None = None,
  ) -> bool:
    """Starts an async save of `state` at `step`; False if params are not finite.

    Args:
      step: the training step the state is at.
      state: dict with params, opt_state, ema_params, step.
      data_iterator: the input iterator (get_state()).
      meta: more JSON for the checkpoint's `meta` (a distilled student's
        sampling steps), beside its stage and step.
    """
    finite = bool(_all_finite((state["params"], state["ema_params"])))
    if not finite:
      logging.error("Not saving step %d: the parameters are not finite.", step)
      return False
    train = {k: v for k, v in state.items() if k != "ema_params"}
    try:  # Orbax first waits for the previous save, and raises its error.
      self.manager.save(
        step,
        args=ocp.args.Composite(
          state=ocp.args.PyTreeSave(train),
          ema_params=ocp.args.PyTreeSave(state["ema_params"]),
          data=checkpoint_io.DataStateSave(data_iterator),
          meta=ocp.args.JsonSave(dict(meta or {}, stage=self.stage, step=int(step))),
        ),
        force=True,
      )
    except Exception as e:  # A full disk, a lost bucket: name the checkpoint.
      failed = self._last_saved if self._last_saved is not None else step
      self._last_saved = None  # Reported here; close() need not again.
      raise OSError(
        f"Checkpoint {self.directory}/{failed} was not written: {type(e).__name__}: {e}"
      ) from e
    self._last_saved = step
    return True

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def restore(
    self, abstract_state: dict[str, Any], data_iterator: Any
  ) -> tuple[dict[str, Any], int] | None:
    """Restores the newest readable checkpoint; None when there is none.

    Damaged checkpoints newer than it are moved to WORKDIR/damaged_checkpoints
    (never deleted), so that the run saves those steps again.

    Args:
      abstract_state: tree of `jax.ShapeDtypeStruct`s with shardings, shaped as
        the state passed to `save`.
      data_iterator: restored in place with `set_state`.

    Returns:
      (state, step) of the newest checkpoint that restores.

    Raises:
      ValueError: if a checkpoint belongs to another stage or network (naming
        both), or if every checkpoint is damaged.
    """
    steps = self.manager.all_steps()
    if not steps:
      return None
    train = {k: v for k, v in abstract_state.items() if k != "ema_params"}

    def read(step):
      where = f"Checkpoint {self.directory}/{step}"
      check_same_stage(
        checkpoint_io.read_meta(self.manager, step)["stage"], self.stage, where
      )
      with checkpoint_io.reading(self.directory, step):
        saved = self.manager.item_metadata(step)["ema_params"].tree
      checkpoint_io.check_same_network(saved, abstract_state["ema_params"], where)
      with checkpoint_io.reading(self.directory, step):
        return self.manager.restore(
          step,
          args=ocp.args.Composite(
            state=_pytree_restore(train),
            ema_params=_pytree_restore(abstract_state["ema_params"]),
            data=checkpoint_io.DataStateRestore(data_iterator),
          ),
        )

    out, step, damaged = checkpoint_io.newest_readable(self.directory, steps, read)
    for bad in damaged:
      self._set_aside(bad)
    if damaged:
      self.manager.reload()
    logging.info("Restored checkpoint %s/%d.", self.directory, step)
    return dict(out["state"], ema_params=out["ema_params"]), step

  def _set_aside(self, step: int) -> None:
    """Moves damaged `step` to WORKDIR/damaged_checkpoints/<step> (or <step>.N)."""
    if jax.process_index() == 0:
      aside = self.directory.parent / "damaged_checkpoints"
      aside.mkdir(parents=True, exist_ok=True)
      target, n = aside / str(step), 0
      while target.exists():
        n += 1
        target = aside / f"{step}.{n}"
      (self.directory / str(step)).rename(target)
      logging.error(
        "Moved damaged checkpoint %s/%d to %s.", self.directory, step, target
      )
    if step == self._last_saved:  # Not this run's save any more.
      self._last_saved = None
    sharding.wait_for_all_processes(f"set_aside_{step}")

  def wait(self) -> None:
    """Blocks until pending async saves are on disk."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves, then checks the last one was finalised.

    Closing twice is a no-op.

    Raises:
      RuntimeError: naming the directory if the last save is not on disk (an
        async save that failed in its background thread).
    """
    if self._closed:
      return
    self._closed = True
    error = None
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001 - reported below, after closing.
      error = e
    finally:
      self.manager.close()  # Else orbax's threads die with the interpreter.
    where = f"{self.directory}/{self._last_saved}"
    if error is not None:
      raise RuntimeError(f"Checkpoint {where} was not written: {error}") from error
    if (
      self._last_saved is not None
      and not (self.directory / str(self._last_saved)).exists()
    ):
      raise RuntimeError(
        f"Checkpoint {where} was not written (the async save failed; see the"
        " errors logged above)."
      )


def _pytree_restore(abstract: Any) -> ocp.args.PyTreeRestore:
  return ocp.args.PyTreeRestore(
    item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract)
  )


def latest_step(workdir: str) -> int | None:
  """The newest checkpoint step in WORKDIR/checkpoints (None if there is none)."""
  if not (checkpoint_io.absolute(workdir) / "checkpoints").exists():
    return None
  with checkpoint_io.meta_manager(workdir) as manager:
    return manager.latest_step()


def checkpoint_meta(workdir: str, step: int | None = None) -> dict[str, Any]:
  """The `meta` JSON of the latest (or `step`'s) checkpoint: stage, step, ...

  Raises:
    ValueError: naming the directory if it holds no checkpoint.
  """
  with checkpoint_io.meta_manager(workdir) as manager:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise ValueError(f"No checkpoints in {str(manager.directory)!r}.")
    return checkpoint_io.read_meta(manager, step)


def restore_ema(
  workdir: str, step: int | None = None, *, stage: dict[str, Any] | None = None
) -> tuple[Any, dict[str, Any]]:
  """The EMA params (host numpy arrays) and meta of a checkpoint.

  Without `step`, the newest readable checkpoint: a damaged one is logged and
  the one before it read (the workdir is not changed).

  Args:
    workdir: a training workdir (holding `checkpoints/`).
    step: checkpoint step; None for the newest readable.
    stage: the stage (`stage_identity`) the checkpoint must belong to; checked
      in its meta before any parameter is read.

  Returns:
    (params, meta): the params pytree ({'params': ...} as the model's
    variables) of numpy arrays and the checkpoint's meta JSON.

  Raises:
    ValueError: naming the directory if it holds no readable checkpoint, or
      both stages if it belongs to another.
  """
  items = {
    "meta": ocp.JsonCheckpointHandler(),
    "ema_params": ocp.PyTreeCheckpointHandler(),
  }
  with checkpoint_io.read_only_manager(workdir, items) as manager:
    steps = manager.all_steps() if step is None else [step]
    if not steps:
      raise ValueError(f"No checkpoints in {str(manager.directory)!r}.")

    def read(s):
      meta = checkpoint_io.read_meta(manager, s)
      if stage is not None:
        check_same_stage(meta["stage"], stage, f"Checkpoint {manager.directory}/{s}")
      with checkpoint_io.reading(manager.directory, s):
        metadata = manager.item_metadata(s)["ema_params"]
        restore_args = jax.tree.map(
          lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata.tree
        )
        params = manager.restore(
          s,
          args=ocp.args.Composite(
            ema_params=ocp.args.PyTreeRestore(restore_args=restore_args)
          ),
        )["ema_params"]
      return params, meta

    (params, meta), found, damaged = checkpoint_io.newest_readable(
      manager.directory, steps, read
    )
    if damaged:
      logging.warning(
        "Using checkpoint %s/%d: the newer %s cannot be read.",
        manager.directory,
        found,
        damaged,
      )
    return params, meta


def restore_ema_params(workdir: str, step: int | None = None) -> Any:
  """The EMA params of `restore_ema` alone."""
  return restore_ema(workdir, step)[0]
