"""Where sample.py writes: the output folder, its staging and samples.jsonl.

A folder that holds samples is only replaced once a run has written all of its
own, staged in a hidden folder inside it (so on its filesystem, even where the
output folder is a mount point: each move is a rename), and with several hosts
process 0 merges their records; see sample.py's docstring.
"""

import contextlib
import glob
import json
import os
import re
import shutil
from collections.abc import Iterator

import jax
from absl import logging

from imagen_video_jax import files, sharding

_SAMPLE_FILE = re.compile(r"^\d{4,}\.(mp4|gif|png|npy)$|^samples\.jsonl$")
# An overwrite's samples, inside the output folder (hidden: starts with a dot).
STAGING = ".partial"
# In STAGING once every sample is there: the list of them to move.
_STAGED = ".staged.json"


def _contents(outdir: str) -> list[str]:
  """The folder's files, without the probes of prepare_outdir (of any host).

  A leftover STAGING folder counts: it holds samples.
  """
  return [n for n in os.listdir(outdir) if not n.startswith(files.PROBE_PREFIX)]


def prepare_outdir(outdir: str, overwrite: bool) -> None:
  """Creates `outdir` and checks it can be written; refuses a non-empty one
  unless `overwrite` (nothing in it changes here)."""
  if os.path.exists(outdir) and not os.path.isdir(outdir):
    raise ValueError(f"--outdir={outdir!r} exists and is not a folder.")
  if os.path.isdir(outdir) and _contents(outdir) and not overwrite:
    raise ValueError(f"--outdir={outdir!r} is not empty; pass --overwrite to reuse it.")
  try:
    files.check_writable(outdir)  # An overwrite's samples are staged in it too.
  except OSError as e:
    raise ValueError(f"--outdir={outdir!r} is not writable: {e}") from e


@contextlib.contextmanager
def output_folder(outdir: str) -> Iterator[str]:
  """The folder to write samples into: `outdir` when it is empty, else
  `outdir`/STAGING, whose files replace the previous samples on success (and
  which is removed on failure, leaving them as they were).

  A STAGING folder left by an earlier run is first finished (its samples were
  all written: they are moved in) or, if that run stopped before it had
  written them all, removed. With several processes every one writes its own
  samples into the same folder; process 0 finishes it (the records merged, the
  files moved) once all have written.
  """
  outdir = os.path.abspath(outdir)
  first = jax.process_index() == 0
  staging = os.path.join(outdir, STAGING)
  if first:
    _recover(outdir)
  sharding.wait_for_all_processes("sample_outdir_recovered")
  empty = not _contents(outdir)
  sharding.wait_for_all_processes("sample_outdir_checked")  # Before any write.
  if not empty and first:
    try:
      os.mkdir(staging)
    except OSError as e:
      raise OSError(e.errno, f"Cannot create {staging}: {e.strerror}") from e
    # A subfolder is on its parent's filesystem unless something is mounted
    # there; a rename across filesystems would fail only after all the samples.
    if os.stat(staging).st_dev != os.stat(outdir).st_dev:
      os.rmdir(staging)
      raise ValueError(f"{staging!r} is not on the filesystem of {outdir!r}.")
  sharding.wait_for_all_processes("sample_staging_ready")
  writedir = outdir if empty else staging
  try:
    yield writedir
  except BaseException:
    if not empty and first:
      shutil.rmtree(staging, ignore_errors=True)
    raise
  sharding.wait_for_all_processes("sample_written")
  if not first:
    return
  if jax.process_count() > 1:
    records = []
    for part in glob.glob(os.path.join(writedir, "samples.*-of-*.jsonl")):
      with open(part, encoding="utf-8") as f:
        records += [json.loads(line) for line in f]
      os.remove(part)
    write_jsonl(os.path.join(writedir, "samples.jsonl"), sorted(records, key=_index))
  if empty:
    return
  # From here the new samples are complete: a run stopped during the moves has
  # the next one finish them (_recover), never delete them.
  _write(os.path.join(staging, _STAGED), json.dumps(sorted(os.listdir(staging))))
  _swap(outdir)


def _swap(outdir: str) -> None:
  """Moves the listed samples of `outdir`/STAGING into `outdir`, removes the
  samples not among them, then the staging folder. Idempotent: a second call
  after an interrupted one finishes the job."""
  staging = os.path.join(outdir, STAGING)
  with open(os.path.join(staging, _STAGED), encoding="utf-8") as f:
    new = set(json.load(f))
  try:
    for file in sorted(new):  # Each replace is atomic: an old sample or a new one.
      if os.path.exists(os.path.join(staging, file)):  # Else moved already.
        os.replace(os.path.join(staging, file), os.path.join(outdir, file))
    for file in os.listdir(outdir):
      if _SAMPLE_FILE.match(file) and file not in new:
        os.remove(os.path.join(outdir, file))
  except OSError as e:
    raise OSError(
      e.errno,
      f"Moving the new samples from {staging} into {outdir} stopped ({e}); "
      "they are kept there, and the next --overwrite run into the folder "
      "finishes the move",
    ) from e
  shutil.rmtree(staging)  # The list, and the folder.


def _recover(outdir: str) -> None:
  """Finishes or removes the STAGING folder an earlier run left in `outdir`."""
  staging = os.path.join(outdir, STAGING)
  if os.path.exists(os.path.join(staging, _STAGED)):
    logging.warning("Moving the samples an earlier run left in %s.", staging)
    _swap(outdir)
  elif os.path.isdir(staging):
    logging.warning("Removing %s: a run stopped before it wrote all.", staging)
    shutil.rmtree(staging)
  parent, name = os.path.split(outdir)
  if os.path.isdir(old := os.path.join(parent, f".{name}.partial")):
    # Where older versions staged (and could strand) samples: left alone.
    logging.warning("%s holds samples of an earlier run; it is left as it is.", old)


def _index(record: dict) -> int:
  return record["index"]


def write_jsonl(path: str, records: list[dict]) -> None:
  """One JSON line per record, written whole (a reader never sees half)."""
  _write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def _write(path: str, text: str) -> None:
  """files.write_text, its errors naming the file (a full disk's do not)."""
  try:
    files.write_text(path, text)
  except OSError as e:
    raise OSError(e.errno, f"Cannot write {path}: {e.strerror or e}") from e
