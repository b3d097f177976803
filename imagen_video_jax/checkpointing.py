"""Orbax checkpoints of a training run, with the data iterator's state.

Layout of a workdir:
  WORKDIR/config.json                   the stage config the run was started with
  WORKDIR/checkpoints/<step>/state      params, opt_state, step (sharded arrays)
  WORKDIR/checkpoints/<step>/ema_params EMA of the params (what sample.py loads)
  WORKDIR/checkpoints/<step>/data       one JSON per process: the iterator state
  WORKDIR/checkpoints/<step>/meta       JSON: the stage the checkpoint belongs to

Saves are asynchronous and atomic (orbax writes to a temporary directory and
renames it), `keep_ckpts` are kept, checkpoints whose params are not finite are
never written, and a damaged latest checkpoint is reported and the one before
it restored.
"""

import base64
import dataclasses
import json
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

# Stage keys that must agree between a checkpoint and the config resuming it.
_STAGE_KEYS = ("name", "frames", "height", "width")


# --------------------------------------------------------------------------- #
# The data iterator's state: one JSON file per process (as grain's handler).
# --------------------------------------------------------------------------- #
class DataStateHandler(ocp.CheckpointHandler):
  """Saves `iterator.get_state()` (bytes or JSON-able) per process."""

  def _path(self, directory: epath.Path) -> epath.Path:
    return directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"

  def save(self, directory: epath.Path, args: "DataStateSave") -> None:
    state = args.iterator.get_state()
    if isinstance(state, bytes):
      record = {"bytes": base64.b64encode(state).decode("ascii")}
    else:
      record = {"json": state}
    directory.mkdir(parents=True, exist_ok=True)
    self._path(directory).write_text(json.dumps(record))

  def restore(self, directory: epath.Path, args: "DataStateRestore") -> Any:
    path = self._path(directory)
    if not path.exists():
      raise ValueError(f"Data iterator state {path} does not exist.")
    record = json.loads(path.read_text())
    state = base64.b64decode(record["bytes"]) if "bytes" in record else record["json"]
    args.iterator.set_state(state)
    return args.iterator

  def metadata(self, directory: epath.Path) -> None:
    return None

  def finalize(self, directory: epath.Path) -> None:
    pass

  def close(self) -> None:
    pass


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
  iterator: Any


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
  iterator: Any


# --------------------------------------------------------------------------- #
# Workdir and its config.json.
# --------------------------------------------------------------------------- #
def stage_summary(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The keys identifying a stage: name, frames, height, width."""
  return {k: config.stage[k] for k in _STAGE_KEYS}


def check_same_stage(saved: dict[str, Any], current: dict[str, Any], where: str):
  """Raises ValueError naming both stages if `saved` is not `current`."""
  saved = {k: saved.get(k) for k in _STAGE_KEYS}
  current = {k: current.get(k) for k in _STAGE_KEYS}
  if saved != current:
    raise ValueError(
      f"{where} is from stage {saved}, but the config trains stage {current}."
    )


def saved_config(
  workdir: str, config: ml_collections.ConfigDict, where: str
) -> dict[str, Any] | None:
  """WORKDIR/config.json as a dict, None if there is none.

  Raises:
    ValueError: naming `where` and both stages if it is not `config`'s stage.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    saved = json.load(f)
  check_same_stage(saved["stage"], stage_summary(config), where)
  return saved


def prepare_workdir(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Creates `workdir`, checks it is writable and holds this stage's config.json.

  Raises:
    ValueError: naming the workdir if it cannot be written, or naming both
      stages if it belongs to another stage.
  """
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_test.{jax.process_index()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise ValueError(f"Workdir {workdir!r} is not writable: {e}") from e
  saved_config(workdir, config, f"Workdir {workdir!r}")
  if jax.process_index() == 0:
    path = os.path.join(workdir, "config.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      f.write(config.to_json(indent=2))
    os.replace(tmp, path)  # Atomic: never a half-written config.json.


def absolute(path: str) -> epath.Path:
  """`path` made absolute (orbax refuses relative paths); URLs kept as they are."""
  return epath.Path(path if "://" in path else os.path.abspath(path))


# --------------------------------------------------------------------------- #
# The checkpoint manager.
# --------------------------------------------------------------------------- #
@jax.jit
def _all_finite(tree: Any) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


class Checkpointer:
  """Saves and restores a run's train state, EMA, data state and stage."""

  def __init__(
    self,
    workdir: str,
    *,
    stage: dict[str, Any],
    keep: int = 3,
    async_save: bool = True,
  ):
    self.directory = absolute(workdir) / "checkpoints"
    self.stage = dict(stage)
    self._last_saved = None
    self.manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=True,
        enable_async_checkpointing=async_save,
      ),
      item_handlers={
        "state": ocp.PyTreeCheckpointHandler(),
        "ema_params": ocp.PyTreeCheckpointHandler(),
        "data": DataStateHandler(),
        "meta": ocp.JsonCheckpointHandler(),
      },
    )

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
    self.manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.PyTreeSave(train),
        ema_params=ocp.args.PyTreeSave(state["ema_params"]),
        data=DataStateSave(data_iterator),
        meta=ocp.args.JsonSave(dict(meta or {}, stage=self.stage, step=int(step))),
      ),
      force=True,
    )
    self._last_saved = step
    return True

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def _log_damaged(self, step: int, error: Exception) -> None:
    logging.error(
      "Checkpoint %s/%d is damaged (%s); trying older.",
      self.directory,
      step,
      str(error)[:500],
    )

  def restore(
    self, abstract_state: dict[str, Any], data_iterator: Any
  ) -> tuple[dict[str, Any], int] | None:
    """Restores the newest readable checkpoint; None when there is none.

    Args:
      abstract_state: tree of `jax.ShapeDtypeStruct`s with shardings, shaped as
        the state passed to `save`.
      data_iterator: restored in place with `set_state`.

    Returns:
      (state, step) of the newest checkpoint that restores. A damaged
      checkpoint is logged and the one before it tried.

    Raises:
      ValueError: if a checkpoint belongs to another stage (naming both).
    """
    steps = sorted(self.manager.all_steps(), reverse=True)
    train = {k: v for k, v in abstract_state.items() if k != "ema_params"}
    for step in steps:
      try:
        meta = self.manager.restore(
          step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
        )["meta"]
      except Exception as e:  # Any read error means damage.
        self._log_damaged(step, e)
        continue
      check_same_stage(meta["stage"], self.stage, f"Checkpoint {self.directory}/{step}")
      try:
        out = self.manager.restore(
          step,
          args=ocp.args.Composite(
            state=_pytree_restore(train),
            ema_params=_pytree_restore(abstract_state["ema_params"]),
            data=DataStateRestore(data_iterator),
          ),
        )
      except Exception as e:  # Any read error means damage.
        self._log_damaged(step, e)
        continue
      state = dict(out["state"], ema_params=out["ema_params"])
      logging.info("Restored checkpoint %s/%d.", self.directory, step)
      return state, step
    if steps:
      raise ValueError(
        f"No readable checkpoint among steps {steps} in {self.directory}."
      )
    return None

  def wait(self) -> None:
    """Blocks until pending async saves are on disk."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves, then checks the last one was finalised.

    Raises:
      RuntimeError: naming the directory if the last save is not on disk (an
        async save that failed in its background thread).
    """
    self.manager.wait_until_finished()
    self.manager.close()
    if (
      self._last_saved is not None
      and not (self.directory / str(self._last_saved)).exists()
    ):
      raise RuntimeError(
        f"Checkpoint {self.directory}/{self._last_saved} was not written (the"
        " async save failed; see the errors logged above)."
      )


def _pytree_restore(abstract: Any) -> ocp.args.PyTreeRestore:
  return ocp.args.PyTreeRestore(
    item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract)
  )


def _read_only_manager(workdir: str, item: str, handler: Any) -> ocp.CheckpointManager:
  """A read-only manager of WORKDIR/checkpoints for one item.

  Raises:
    ValueError: naming the directory if it does not exist.
  """
  directory = absolute(workdir) / "checkpoints"
  if not directory.exists():
    raise ValueError(f"No checkpoints in {str(directory)!r}.")
  return ocp.CheckpointManager(
    directory,
    options=ocp.CheckpointManagerOptions(read_only=True, create=False),
    item_handlers={item: handler},
  )


def latest_step(workdir: str) -> int | None:
  """The newest checkpoint step in WORKDIR/checkpoints (None if there is none)."""
  with _read_only_manager(workdir, "meta", ocp.JsonCheckpointHandler()) as manager:
    return manager.latest_step()


def checkpoint_meta(workdir: str, step: int | None = None) -> dict[str, Any]:
  """The `meta` JSON of the latest (or `step`'s) checkpoint: stage, step, ...

  Raises:
    ValueError: naming the directory if it holds no checkpoint.
  """
  with _read_only_manager(workdir, "meta", ocp.JsonCheckpointHandler()) as manager:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise ValueError(f"No checkpoints in {str(manager.directory)!r}.")
    return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
      "meta"
    ]


def restore_ema_params(workdir: str, step: int | None = None) -> Any:
  """The EMA params of the latest (or `step`'s) checkpoint as host numpy arrays.

  Args:
    workdir: a training workdir (holding `checkpoints/`).
    step: checkpoint step; None for the latest.

  Returns:
    The params pytree ({'params': ...} as the model's variables) of numpy arrays.

  Raises:
    ValueError: naming the directory if it holds no checkpoint.
  """
  with _read_only_manager(
    workdir, "ema_params", ocp.PyTreeCheckpointHandler()
  ) as manager:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise ValueError(f"No checkpoints in {str(manager.directory)!r}.")
    metadata = manager.item_metadata(step)["ema_params"]
    restore_args = jax.tree.map(
      lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata.tree
    )
    return manager.restore(
      step,
      args=ocp.args.Composite(
        ema_params=ocp.args.PyTreeRestore(restore_args=restore_args)
      ),
    )["ema_params"]
