"""Writing files so that no reader sees half of one, and probing folders."""

import contextlib
import os
from collections.abc import Iterator

import jax
from etils import epath

# Name start of the probes of check_writable (listings skip them).
PROBE_PREFIX = ".write_test."


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """Yields a temporary path next to `path` (same extension); renames on success.

  The rename is atomic, so `path` holds the previous file or the new one, never
  half of it; on failure the temporary file is removed.
  """
  folder, name = os.path.split(os.path.abspath(path))
  stem, ext = os.path.splitext(name)
  tmp = os.path.join(folder, f".{stem}.tmp{os.getpid()}{ext}")
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def is_url(path: str) -> bool:
  """Whether `path` names an object store (gs://...), read through epath."""
  return "://" in path


def write_text(path: str, text: str) -> None:
  """Writes `text` (UTF-8) to `path` through atomic_path (a URL: one PUT,
  which replaces an object whole)."""
  if is_url(path):
    epath.Path(path).write_text(text)
    return
  with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
    f.write(text)


def check_writable(folder: str) -> None:
  """Creates `folder` if needed, then writes and removes a probe file in it.

  Raises:
    OSError: if it cannot be created or written.
  """
  # Process index and pid: the hosts of a pod may share the folder.
  name = f"{PROBE_PREFIX}{jax.process_index()}.{os.getpid()}"
  if is_url(folder):  # Not os: it would make a local folder named 'gs:'.
    probe = epath.Path(folder) / name
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_text("ok")
    probe.unlink()
    return
  os.makedirs(folder, exist_ok=True)
  probe = os.path.join(folder, name)
  with open(probe, "w") as f:
    f.write("ok")
  os.remove(probe)
