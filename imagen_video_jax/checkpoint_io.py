"""What a checkpoint's files hold, and whether they read.

The handler of the data iterator's state (one JSON for all processes), and the reading
side of `checkpointing`: a read error of any kind is damage
(`DamagedCheckpointError`); a checkpoint of another network is a mismatch
(`check_same_network`, a ValueError); `newest_readable` walks a workdir's steps
newest first past the damaged ones.
"""

import contextlib
import dataclasses
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from imagen_video_jax import sharding


# --------------------------------------------------------------------------- #
# The data iterator's state: one JSON file for all processes (the index of the
# next global batch is the same on every one), so that a run resumes on any
# number of hosts.
# --------------------------------------------------------------------------- #
class DataStateHandler(ocp.CheckpointHandler):
  """Saves `iterator.get_state()` (JSON-able), written once by process 0."""

  FILE = "data_state.json"

  def save(self, directory: epath.Path, args: "DataStateSave") -> None:
    state = args.iterator.get_state()  # On every process: they agree.
    if jax.process_index() == 0:
      directory.mkdir(parents=True, exist_ok=True)
      (directory / self.FILE).write_text(json.dumps({"json": state}))

  def restore(self, directory: epath.Path, args: "DataStateRestore") -> Any:
    path = directory / self.FILE
    if not path.exists():  # Written before the one file: each process's own.
      legacy = sorted(directory.glob("process_0-of-*.json"))
      if not legacy:
        raise ValueError(f"Data iterator state {path} does not exist.")
      path = legacy[0]
    record = json.loads(path.read_text())
    if "json" not in record:
      raise ValueError(f"Data iterator state {path} holds no JSON state.")
    args.iterator.set_state(record["json"])
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


def absolute(path: str) -> epath.Path:
  """`path` made absolute (orbax refuses relative paths); URLs kept as they are."""
  return epath.Path(path if "://" in path else os.path.abspath(path))


# --------------------------------------------------------------------------- #
# Damage (unreadable files) and mismatch (another stage or network).
# --------------------------------------------------------------------------- #
class DamagedCheckpointError(Exception):
  """A checkpoint's files cannot be read (truncated, missing, corrupt)."""


@contextlib.contextmanager
def reading(directory: epath.Path, step: int) -> Iterator[None]:
  """Turns any error of orbax or tensorstore reading `step` into damage."""
  try:
    yield
  except Exception as e:  # Any read error means damage.
    raise DamagedCheckpointError(
      f"Checkpoint {directory}/{step} is damaged ({' '.join(str(e).split())[:300]})"
    ) from e


def read_meta(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  """The `meta` JSON of `step` (stage, step, ...); DamagedCheckpointError if unreadable."""
  with reading(manager.directory, step):
    return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
      "meta"
    ]


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): tuple(x.shape) for path, x in leaves}


def check_same_network(saved: Any, current: Any, where: str) -> None:
  """Raises ValueError naming the parameters whose names or shapes differ.

  Args:
    saved: a checkpoint's tree of array metadata (orbax's `item_metadata`).
    current: the config's tree of arrays or `jax.ShapeDtypeStruct`s.
    where: what holds `saved`, for the message.
  """
  a, b = _shapes(saved), _shapes(current)
  if a == b:
    return
  differ = [
    f"{k}: {a.get(k, 'absent')} vs {b.get(k, 'absent')}"
    for k in sorted(a.keys() | b.keys())
    if a.get(k) != b.get(k)
  ]
  raise ValueError(
    f"{where} holds another network than the config builds: {len(differ)}"
    f" parameters differ (checkpoint vs config), {'; '.join(differ[:5])}."
  )


def newest_readable(
  directory: epath.Path, steps: list[int], read: Callable[[int], Any]
) -> tuple[Any, int, list[int]]:
  """`read(step)` for `steps`, newest first, until one is not damaged.

  A mismatch that `read` raises (ValueError) propagates: only damage moves on
  to an older step. Every process must agree that a step reads.

  Returns:
    (what `read` returned, its step, the damaged steps newer than it).

  Raises:
    ValueError: naming the directory if every step is damaged.
  """
  damaged = []
  for step in sorted(steps, reverse=True):
    try:
      value, error = read(step), None
    except DamagedCheckpointError as e:
      value, error = None, e
    if not sharding.any_process(error is not None):
      return value, step, damaged
    logging.error(
      "%s; trying an older one.", error or f"Step {step}: damaged elsewhere"
    )
    damaged.append(step)
  raise ValueError(
    f"No readable checkpoint among steps {sorted(steps)} in {directory}: each is"
    " damaged (see the errors logged above); nothing was moved or deleted."
  )


def read_only_manager(workdir: str, items: dict[str, Any]) -> ocp.CheckpointManager:
  """A read-only manager of WORKDIR/checkpoints for `items` (name -> handler).

  Raises:
    ValueError: naming the directory if it does not exist.
  """
  directory = absolute(workdir) / "checkpoints"
  if not directory.exists():
    raise ValueError(f"No checkpoints in {str(directory)!r}.")
  return ocp.CheckpointManager(
    directory,
    options=ocp.CheckpointManagerOptions(read_only=True, create=False),
    item_handlers=items,
  )


def meta_manager(workdir: str) -> ocp.CheckpointManager:
  return read_only_manager(workdir, {"meta": ocp.JsonCheckpointHandler()})
