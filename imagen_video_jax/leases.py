"""One run per workdir: a lease file that names the run holding it.

  WORKDIR/lease.json  {"token", "host", "pid", "start", "heartbeat", "command"}

A training or distillation run takes its workdir's lease before it writes
anything else there and gives it back on every exit it survives; a second run
on the same workdir (a user's second launch, a scheduler relaunching a job it
thinks died) is refused at once, naming the holder. A holder that died without
giving the lease back is detected, and its lease taken over, without a human:

  - on the holder's own host, at once: its pid is gone;
  - from anywhere, once its heartbeat (renewed every `heartbeat_s` by a thread
    of the holder) is older than `stale_s`.

Taking the lease works where `epath` reaches, object stores such as gs://
included (no flock or exclusive create there). A new lease on a local disk is
created with an atomic exclusive link, so one of two simultaneous starts wins.
Otherwise, and to take over a stale lease anywhere, the taker writes its
token, waits `settle_s` and holds the lease only if its token is still the one
there: of writers that overlap, the last one wins, and each of the others
reads the winner. The holder checks its token at every heartbeat, and a run
whose lease was taken reads `lost` and stops before its next save.
"""

import contextlib
import json
import os
import socket
import sys
import threading
import time
import uuid
from typing import Any

from absl import logging
from etils import epath

from imagen_video_jax import files

NAME = "lease.json"
HEARTBEAT_S = 10.0  # How often the holder renews the lease.
STALE_S = 60.0  # A lease not renewed for this long is a dead run's.
SETTLE_S = 2.0  # Wait between writing a token and reading it back.


class WorkdirBusyError(ValueError):
  """Another live run holds the workdir."""


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Alive, another user's.
    return True
  return True


def describe(record: dict[str, Any]) -> str:
  """'host H, pid P, started at 2026-12-06 08:00:00 UTC (heartbeat 3 s ago)'."""
  start = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(record.get("start", 0)))
  age = time.time() - float(record.get("heartbeat", 0))
  return (
    f"host {record.get('host')!r}, pid {record.get('pid')}, started at {start}"
    f" (heartbeat {age:.0f} s ago): {record.get('command', '')}"
  )


class Lease:
  """WORKDIR/lease.json, taken by `acquire` and given back by `release`."""

  def __init__(
    self,
    workdir: str,
    *,
    heartbeat_s: float = HEARTBEAT_S,
    stale_s: float = STALE_S,
    settle_s: float = SETTLE_S,
    exclusive_create: bool | None = None,
  ):
    """`exclusive_create`: use the local disk's atomic link (default: local paths)."""
    self.workdir = workdir
    self.path = epath.Path(workdir if "://" in workdir else os.path.abspath(workdir))
    self.path = self.path / NAME
    self.heartbeat_s, self.stale_s, self.settle_s = heartbeat_s, stale_s, settle_s
    self.exclusive = (
      not files.is_url(workdir) if exclusive_create is None else exclusive_create
    )
    self.token = uuid.uuid4().hex
    self.record = {
      "token": self.token,
      "host": socket.gethostname(),
      "pid": os.getpid(),
      "start": time.time(),
      "heartbeat": time.time(),
      "command": " ".join(sys.argv)[:500],
    }
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self._lost: dict[str, Any] | None = None

  # ------------------------------------------------------------------------ #
  # Reading and writing the file.
  # ------------------------------------------------------------------------ #
  def read(self) -> dict[str, Any] | None:
    """The lease's record; None if there is none ({} if it cannot be parsed)."""
    try:
      text = self.path.read_text()
    except FileNotFoundError:
      return None
    try:
      record = json.loads(text)
    except json.JSONDecodeError:
      return {}
    return record if isinstance(record, dict) else {}

  def _write(self) -> None:
    """Replaces the file with this run's record (atomic: tmp + rename, or one PUT)."""
    self.record["heartbeat"] = time.time()
    text = json.dumps(self.record)
    if not files.is_url(str(self.path)):
      tmp = f"{self.path}.{self.token}.tmp"
      with open(tmp, "w") as f:
        f.write(text)
      os.replace(tmp, self.path)
    else:  # An object store replaces an object whole.
      self.path.write_text(text)

  def _create(self) -> bool:
    """Creates the file with this run's record unless it exists (local disks)."""
    tmp = f"{self.path}.{self.token}.tmp"
    self.record["heartbeat"] = time.time()
    with open(tmp, "w") as f:
      f.write(json.dumps(self.record))
    try:
      os.link(tmp, self.path)  # Atomic, and fails if the lease exists.
      return True
    except FileExistsError:
      return False
    finally:
      os.remove(tmp)

  def stale(self, record: dict[str, Any]) -> bool:
    """Whether `record` is a dead run's lease (or unreadable and old)."""
    if not record:  # Half written by a crash, or damaged: judged by its age.
      try:
        age = time.time() - self.path.stat().mtime
      except FileNotFoundError:
        return True
      return age > self.stale_s
    if record.get("host") == socket.gethostname() and not _pid_alive(
      int(record.get("pid", -1))
    ):
      return True
    return time.time() - float(record.get("heartbeat", 0)) > self.stale_s

  # ------------------------------------------------------------------------ #
  # Taking, renewing and giving back.
  # ------------------------------------------------------------------------ #
  def acquire(self) -> None:
    """Takes the lease (creating the workdir), or raises naming its holder.

    Raises:
      WorkdirBusyError: naming the workdir and the holder (host, pid, start
        time, command) if a live run holds it, or took it in the meantime.
    """
    self.path.parent.mkdir(parents=True, exist_ok=True)
    where = f"Workdir {self.workdir!r}"
    if self.exclusive and self._create():
      self._start_heartbeat()
      return
    held = self.read()
    if held is not None and not self.stale(held):
      raise WorkdirBusyError(
        f"{where} is in use by another run ({describe(held) if held else 'its lease'}"
        f" is in {self.path}). Stop that run, or wait: a lease not renewed for"
        f" {self.stale_s:.0f} s, or whose process is gone, is taken over."
      )
    if held is not None:
      logging.warning(
        "%s: taking over the lease of a run that is gone (%s).", where, describe(held)
      )
    self._write()
    time.sleep(self.settle_s)  # Let an overlapping writer's token land.
    now = self.read()
    if not now or now.get("token") != self.token:
      raise WorkdirBusyError(
        f"{where} was taken by another run starting at the same time"
        f" ({describe(now) if now else 'unknown'})."
      )
    self._start_heartbeat()

  def _start_heartbeat(self) -> None:
    logging.info("Holding the lease %s.", self.path)
    self._thread = threading.Thread(target=self._beat, name="lease", daemon=True)
    self._thread.start()

  def _beat(self) -> None:
    while not self._stop.wait(self.heartbeat_s):
      try:
        now = self.read()
        if not now or now.get("token") != self.token:
          self._lost = now or {}
          logging.error(
            "The lease %s was taken by another run (%s).",
            self.path,
            describe(now) if now else "removed",
          )
          return
        self._write()
      except OSError as e:  # A flaky store: try again at the next beat.
        logging.warning("Could not renew the lease %s: %s", self.path, e)

  @property
  def held(self) -> bool:
    return self._thread is not None and self._lost is None

  @property
  def lost(self) -> dict[str, Any] | None:
    """The record of the run that took this run's lease; None while held."""
    return self._lost

  def release(self) -> None:
    """Stops the heartbeat and removes the lease if it is still this run's."""
    if self._thread is None:
      return
    self._stop.set()
    self._thread.join()
    self._thread = None
    self.give_back()

  def give_back(self) -> None:
    """Removes the lease file if it is this run's (safe from a signal handler)."""
    self._stop.set()
    now = self.read()
    if now and now.get("token") == self.token:
      with contextlib.suppress(FileNotFoundError):
        self.path.unlink()
