"""Where sample.py writes: the output folder, its staging and samples.jsonl.

A folder that holds samples is only replaced once a run has written all of its
own (staged in a hidden sibling), and with several hosts process 0 merges
their records; see sample.py's docstring.
"""

import contextlib
import glob
import json
import os
import re
import shutil
from collections.abc import Iterator

import jax

from imagen_video_jax import files, sharding

_SAMPLE_FILE = re.compile(r"^\d{4,}\.(mp4|gif|png|npy)$|^samples\.jsonl$")


def _contents(outdir: str) -> list[str]:
  """The folder's files, without the probes of prepare_outdir (of any host)."""
  return [n for n in os.listdir(outdir) if not n.startswith(files.PROBE_PREFIX)]


def prepare_outdir(outdir: str, overwrite: bool) -> None:
  """Creates `outdir` and checks it can be written; refuses a non-empty one
  unless `overwrite` (nothing in it changes here)."""
  if os.path.exists(outdir) and not os.path.isdir(outdir):
    raise ValueError(f"--outdir={outdir!r} exists and is not a folder.")
  if os.path.isdir(outdir) and _contents(outdir) and not overwrite:
    raise ValueError(f"--outdir={outdir!r} is not empty; pass --overwrite to reuse it.")
  try:
    # Probed in the parent too: an overwrite's samples go there first.
    for folder in (outdir, os.path.dirname(os.path.abspath(outdir))):
      files.check_writable(folder)
  except OSError as e:
    raise ValueError(f"--outdir={outdir!r} is not writable: {e}") from e


@contextlib.contextmanager
def output_folder(outdir: str) -> Iterator[str]:
  """The folder to write samples into: `outdir` when it is empty, else a
  temporary sibling whose files replace the previous samples on success (and
  which is removed on failure, leaving them as they were).

  With several processes every one writes its own samples into the same
  folder; process 0 finishes it (the records merged, the files moved) once all
  have written.
  """
  first = jax.process_index() == 0
  empty = not _contents(outdir)
  sharding.wait_for_all_processes("sample_outdir_checked")  # Before any write.
  parent, name = os.path.split(os.path.abspath(outdir))
  staging = os.path.join(parent, f".{name}.partial")
  if not empty and first:
    shutil.rmtree(staging, ignore_errors=True)  # A failed run's.
    os.mkdir(staging)
  sharding.wait_for_all_processes("sample_staging_ready")
  writedir = os.path.abspath(outdir) if empty else staging
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
  new = set(os.listdir(staging))
  for file in new:  # Each replace is atomic: an old sample or a new one.
    os.replace(os.path.join(staging, file), os.path.join(outdir, file))
  for file in os.listdir(outdir):
    if _SAMPLE_FILE.match(file) and file not in new:
      os.remove(os.path.join(outdir, file))
  os.rmdir(staging)


def _index(record: dict) -> int:
  return record["index"]


def write_jsonl(path: str, records: list[dict]) -> None:
  """One JSON line per record, written whole (a reader never sees half)."""
  files.write_text(
    path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
  )
