"""The workdir lease: one run per workdir, a dead holder's lease taken over."""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from imagen_video_jax import leases


def _fast(workdir, **kwargs) -> leases.Lease:
  kwargs = dict(dict(heartbeat_s=0.05, stale_s=5.0, settle_s=0.2), **kwargs)
  return leases.Lease(str(workdir), **kwargs)


def _lease_of(workdir, **fields) -> None:
  """Writes another run's lease into `workdir`."""
  record = dict(
    token="other",
    host=socket.gethostname(),
    pid=os.getpid(),
    start=time.time() - 100,
    heartbeat=time.time(),
    command="train --workdir=...",
  )
  record.update(fields)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, leases.NAME), "w") as f:
    json.dump(record, f)


def _dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def test_a_second_run_is_refused_naming_the_holder(tmp_path):
  first, second = _fast(tmp_path / "w"), _fast(tmp_path / "w")
  first.acquire()
  try:
    assert first.held
    with pytest.raises(leases.WorkdirBusyError) as e:
      second.acquire()
    message = str(e.value)
    assert f"Workdir {str(tmp_path / 'w')!r} is in use by another run" in message
    assert f"host {socket.gethostname()!r}, pid {os.getpid()}, started at" in message
    assert not second.held
  finally:
    first.release()
  assert not (tmp_path / "w" / leases.NAME).exists()  # Given back.
  second.acquire()  # Free again.
  second.release()


def test_the_heartbeat_renews_the_lease(tmp_path):
  lease = _fast(tmp_path)
  lease.acquire()
  try:
    beat = lease.read()["heartbeat"]
    deadline = time.time() + 5
    while lease.read()["heartbeat"] == beat and time.time() < deadline:
      time.sleep(0.02)
    assert lease.read()["heartbeat"] > beat
  finally:
    lease.release()


@pytest.mark.parametrize(
  "fields, taken",
  [
    (dict(pid="dead"), True),  # This host, its process gone: at once.
    (dict(host="elsewhere", heartbeat=time.time() - 3600), True),  # Not renewed.
    (dict(host="elsewhere"), False),  # Another host, renewed: alive.
    (dict(), False),  # This host, its process alive.
  ],
  ids=["dead_pid", "old_heartbeat", "other_host_alive", "this_host_alive"],
)
def test_a_dead_runs_lease_is_taken_over_a_live_ones_is_not(tmp_path, fields, taken):
  if fields.get("pid") == "dead":
    fields = dict(pid=_dead_pid())
  if "heartbeat" in fields:  # Relative to now, not to collection time.
    fields["heartbeat"] = time.time() - 3600
  _lease_of(tmp_path, **fields)
  lease = _fast(tmp_path)
  if not taken:
    with pytest.raises(leases.WorkdirBusyError, match="in use by another run"):
      lease.acquire()
    assert lease.read()["token"] == "other"
    return
  lease.acquire()
  try:
    assert lease.read()["token"] == lease.token
  finally:
    lease.release()


def test_a_damaged_lease_is_judged_by_its_age(tmp_path):
  path = tmp_path / leases.NAME
  path.write_text("{half a lea")
  with pytest.raises(leases.WorkdirBusyError):  # Maybe being written: wait.
    _fast(tmp_path).acquire()
  os.utime(path, (time.time() - 3600, time.time() - 3600))
  lease = _fast(tmp_path)
  lease.acquire()
  lease.release()


@pytest.mark.parametrize("exclusive_create", [True, False], ids=["local", "store"])
def test_of_runs_starting_together_exactly_one_holds_the_lease(
  tmp_path, exclusive_create
):
  # "store" is the protocol of an object store (gs://): write, settle, read back.
  runs = [_fast(tmp_path, exclusive_create=exclusive_create) for _ in range(4)]
  barrier, refused = threading.Barrier(len(runs)), []

  def take(lease):
    barrier.wait()
    try:
      lease.acquire()
    except leases.WorkdirBusyError as e:
      refused.append(str(e))

  threads = [threading.Thread(target=take, args=(r,)) for r in runs]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  try:
    assert [r.held for r in runs].count(True) == 1
    assert len(refused) == len(runs) - 1
    holder = next(r for r in runs if r.held)
    assert leases.Lease(str(tmp_path)).read()["token"] == holder.token
  finally:
    for r in runs:
      r.release()


def test_a_run_whose_lease_was_taken_knows_it(tmp_path):
  lease = _fast(tmp_path)
  lease.acquire()
  try:
    _lease_of(tmp_path, host="elsewhere", pid=4242)
    deadline = time.time() + 5
    while lease.lost is None and time.time() < deadline:
      time.sleep(0.02)
    assert lease.lost["host"] == "elsewhere" and not lease.held
  finally:
    lease.release()
  assert lease.read()["token"] == "other"  # The new holder's lease is kept.
