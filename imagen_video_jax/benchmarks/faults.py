r"""Fault drill: one runlocal stage trained through kills, signals and bad disks.

  python -m imagen_video_jax.benchmarks.faults [--stage=base] [--steps=30] \
    [--ckpt_every=10] [--kills=3] [--seed=0]

Trains `configs/STAGE.py:runlocal` on a tiny bouncing_digits (built in a
temporary folder) once without interruption, the reference, then once per
fault in a fresh workdir, restarting after each fault until the run finishes:

  sigkill       SIGKILL at --kills random steps after the first;
  sigkill_save  SIGKILL while a checkpoint is being written, --kills times;
  sigterm       SIGTERM after a random step (expect 143 and a saved step);
  sigint        SIGINT (Ctrl-C) likewise (expect 130);
  sigterm_start SIGTERM during start-up (expect 143 within seconds);
  damaged       the reference's latest checkpoint truncated, then a restart;
  full_disk     the workdir on a tmpfs too small for a checkpoint (expect 1
                and one error line), grown, then a restart (skipped where a
                tmpfs cannot be mounted);
  refused       the finished reference restarted with another model (expect
                1, one error line, the workdir unchanged);
  double_launch the same command twice on one workdir (expect the second
                refused within seconds, naming the first, which finishes);
  damaged_data  2 KB of random bytes in a train file (expect 1 and one line
                naming the file and record), repaired, then a restart;
  cross_device_outdir  the sampler with --overwrite into a folder that is a
                mount point (expect the new samples in place, nothing
                stranded; skipped where a tmpfs cannot be mounted);
  long_video    the sampler's peak memory on 20 s of 1080p as tsr1's input
                video, against a 64x64 clip's (expect the same).

Per fault it prints the exit statuses, whether the run finished, whether
every loss it logged equals the reference's bitwise, whether a file was lost
(a checkpoint the reference keeps, config.json, or anything of a refused
restart), and the error lines and tracebacks of its logs.
"""

import glob
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import imageio_ffmpeg
from absl import app, flags

from imagen_video_jax import data_build, reporting

_STAGE = flags.DEFINE_string("stage", "base", "Stage config (runlocal variant).")
_STEPS = flags.DEFINE_integer("steps", 30, "Training steps of each run.")
_CKPT_EVERY = flags.DEFINE_integer("ckpt_every", 10, "Steps between checkpoints.")
_KILLS = flags.DEFINE_integer("kills", 3, "SIGKILLs per kill fault.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the kill moments.")
FAULTS = (
  "sigkill",
  "sigkill_save",
  "sigterm",
  "sigint",
  "sigterm_start",
  "damaged",
  "full_disk",
  "double_launch",
  "damaged_data",
  "cross_device_outdir",
  "long_video",
  "refused",
)
_FAULTS = flags.DEFINE_list("faults", list(FAULTS), "The faults to drill (all).")

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Drill:
  """Starts the trainer on workdirs under `root` and watches its logs."""

  def __init__(self, root: str, data_dir: str):
    self.root, self.data_dir, self.runs = root, data_dir, 0
    self.env = dict(
      os.environ,
      JAX_PLATFORMS="cpu",
      JAX_COMPILATION_CACHE_DIR=os.path.join(root, "jax_cache"),
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )

  def start(self, workdir: str, *overrides: str) -> tuple[subprocess.Popen, str]:
    self.runs += 1
    log = os.path.join(self.root, f"log{self.runs}.txt")
    args = [
      f"--config=configs/{_STAGE.value}.py:runlocal",
      f"--workdir={workdir}",
      f"--config.data.data_dir={self.data_dir}",
      "--config.batch_size=4",
      "--config.log_every=1",
      "--config.optim.warmup_steps=5",
      f"--config.total_steps={_STEPS.value}",
      f"--config.ckpt_every={_CKPT_EVERY.value}",
      *overrides,
    ]
    with open(log, "wb") as f:
      proc = subprocess.Popen(
        [sys.executable, "-m", "imagen_video_jax.train", *args],
        cwd=_ROOT,
        env=self.env,
        stdout=f,
        stderr=subprocess.STDOUT,
      )
    return proc, log

  def run(self, workdir: str, *overrides: str) -> tuple[int, str]:
    proc, log = self.start(workdir, *overrides)
    return proc.wait(), log

  def binary(self, module: str, *args: str) -> tuple[int, str, float]:
    """Runs `python -m module args`: (status, log, peak RSS in GB)."""
    self.runs += 1
    log = os.path.join(self.root, f"log{self.runs}.txt")
    with open(log, "wb") as f:
      proc = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=_ROOT,
        env=self.env,
        stdout=f,
        stderr=subprocess.STDOUT,
      )
    _, status, usage = os.wait4(proc.pid, 0)  # This child's own peak.
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, log, usage.ru_maxrss / 2**20

  def sample(self, cascade: str, outdir: str, *args: str) -> tuple[int, str, float]:
    """The sampler on the runlocal cascade of folder `cascade`, 2 prompts."""
    prompts = os.path.join(self.root, "prompts.txt")
    with open(prompts, "w") as f:
      f.write("the digit 3 moving left\nthe digit 7 moving up\n")
    return self.binary(
      "imagen_video_jax.sample",
      f"--config=configs/cascade.py:runlocal,workdir_root={cascade}",
      f"--prompts={prompts}",
      f"--outdir={outdir}",
      *args,
    )


def read(path: str) -> str:
  with open(path, errors="replace") as f:
    return f.read()


def steps_logged(log: str) -> int:
  """Steps the run has logged (clu's log writer writes each at once)."""
  return read(log).count("bad_steps_total=")


def wait_until(predicate, proc: subprocess.Popen, timeout: float = 900) -> bool:
  """Polls `predicate` until true; False if the process exits first."""
  deadline = time.time() + timeout
  while not predicate():
    if proc.poll() is not None or time.time() > deadline:
      return False
    time.sleep(0.02)
  return True


def saving(workdir: str, since: float) -> bool:
  """Whether a checkpoint started after `since` is being written."""
  pattern = os.path.join(workdir, "checkpoints", "*.orbax-checkpoint-tmp")
  return any(os.path.getmtime(p) > since for p in glob.glob(pattern))


def latest_step(workdir: str) -> int:
  """The newest finished checkpoint's step (0 without one)."""
  ckpts = os.path.join(workdir, "checkpoints")
  steps = (
    [int(p) for p in os.listdir(ckpts) if p.isdigit()] if os.path.isdir(ckpts) else []
  )
  return max(steps, default=0)


def mount_tmpfs(folder: str, size: str, fault: str) -> bool:
  """Creates `folder` and mounts a tmpfs of `size` there; False (and the
  fault's row says why it is skipped) where that is not allowed."""
  os.makedirs(folder)
  mounted = subprocess.run(
    ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", folder],
    capture_output=True,
  )
  if mounted.returncode:
    why = mounted.stderr.decode(errors="replace").strip() or "mount failed"
    print(f"{fault:13} | skipped: cannot mount a tmpfs here ({why})")
  return mounted.returncode == 0


def tree_digest(path: str) -> str:
  """A hash of every file's name and bytes under `path`."""
  h = hashlib.sha256()
  for folder, _, files in sorted(os.walk(path)):
    for name in sorted(files):
      full = os.path.join(folder, name)
      h.update(os.path.relpath(full, path).encode())
      with open(full, "rb") as f:
        h.update(f.read())
  return h.hexdigest()


def complaints(logs: list[str]) -> tuple[list[str], str]:
  """The error lines of this project's code in `logs`, and 'tracebacks /
  of them "Event loop is closed"' (orbax's own threads log a failed write)."""
  errors, tracebacks, closed = [], 0, 0
  for log in logs:
    text = read(log)
    tracebacks += text.count("Traceback (most recent call last)")
    closed += text.count("Event loop is closed")
    errors += [
      line.split("] ", 1)[-1][:110]
      for line in text.splitlines()
      if line.startswith("E") and "run_lib.py" in line
    ]
  return errors, f"{tracebacks} / {closed}"


def verdict(name, workdir, statuses, logs, reference, note="", extra_saves=()) -> None:
  """Prints the fault's row: statuses, finished, losses bitwise, lost files.

  A checkpoint is lost when one of the newest keep_ckpts (3) saves is missing:
  the reference's saves and `extra_saves` (a signal's).
  """
  ckpts = os.path.join(workdir, "checkpoints")
  saves = {
    int(c) for c in os.listdir(os.path.join(reference["workdir"], "checkpoints"))
  }
  kept = [str(c) for c in sorted(saves | set(extra_saves))[-3:]]
  have = (
    sorted(p for p in os.listdir(ckpts) if p.isdigit()) if os.path.isdir(ckpts) else []
  )
  finished = statuses[-1] == 0 and str(_STEPS.value) in have
  files = sorted(glob.glob(os.path.join(workdir, "events.out.*")))
  equal = all(
    loss == reference["losses"].get(step)
    for f in files
    for step, loss in reporting.logged_scalars(workdir, "loss", [f]).items()
  )
  covered = set().union(
    *(reporting.logged_scalars(workdir, "loss", [f]) for f in files)
  )
  same_config = read(os.path.join(workdir, "config.json")) == reference["config"]
  lost = [c for c in kept if c not in have] + ([] if same_config else ["config.json"])
  errors, tracebacks = complaints(logs)
  print(
    f"{name:13} | {','.join(map(str, statuses)):11} | {'yes' if finished else 'NO':8} |"
    f" {('yes' if equal else 'NO') + f' ({len(covered)} steps)':14} |"
    f" {', '.join(lost) or 'none':6} | {len(errors)} / {tracebacks:7} |"
    f" {note or (errors[0] if errors else '')}",
    flush=True,
  )


def main(argv: list[str]) -> None:
  del argv
  rng = random.Random(_SEED.value)
  want = set(_FAULTS.value)
  if want - set(FAULTS):
    raise app.UsageError(f"Unknown --faults {sorted(want - set(FAULTS))}; of {FAULTS}.")
  root = tempfile.mkdtemp(prefix="faults.")
  data_dir = os.path.join(root, "tfds")
  for config in ("videos", "images"):
    data_build.build_dataset(
      "bouncing_digits", data_dir, config=config, train_size=16, test_size=4
    )
  drill = Drill(root, data_dir)
  workdir = lambda name: os.path.join(root, name)  # noqa: E731
  total = _STEPS.value

  t0 = time.time()
  status, log = drill.run(workdir("reference"))
  assert status == 0, f"the reference run failed ({status}); see {log}"
  reference = dict(
    workdir=workdir("reference"),
    losses=reporting.logged_scalars(workdir("reference"), "loss"),
    config=read(os.path.join(workdir("reference"), "config.json")),
  )
  print(f"reference: {total} steps in {time.time() - t0:.0f} s (with compiling)")
  print(
    "fault         | statuses    | finished | losses bitwise | lost   |"
    " errors / tracebacks / closed loop | first error or note"
  )

  # SIGKILL at random steps after the first, or while a checkpoint is written.
  for name in ("sigkill", "sigkill_save"):
    if name not in want:
      continue
    w, statuses, logs = workdir(name), [], []
    for _ in range(_KILLS.value):
      left = total - latest_step(w)
      if left < 2:
        break
      proc, log = drill.start(w)
      logs.append(log)
      if name == "sigkill":  # After 1 to left - 1 new steps.
        target = rng.randint(1, left - 1)
        hit = wait_until(lambda log=log, t=target: steps_logged(log) >= t, proc)
      else:  # A save this run started (not one a kill left).
        started = time.time()
        hit = wait_until(lambda w=w, t=started: saving(w, t), proc)
      if hit:
        proc.send_signal(signal.SIGKILL)
      statuses.append(proc.wait())
    status, log = drill.run(w)
    verdict(name, w, statuses + [status], logs + [log], reference)

  # SIGTERM and SIGINT after a random step, then a restart.
  for name, signum in (("sigterm", signal.SIGTERM), ("sigint", signal.SIGINT)):
    if name not in want:
      continue
    w = workdir(name)
    proc, log1 = drill.start(w)
    target = rng.randint(2, total - 2)
    wait_until(lambda log=log1, t=target: steps_logged(log) >= t, proc)
    proc.send_signal(signum)
    first = proc.wait()
    saved = latest_step(w)
    status, log2 = drill.run(w)
    note = f"signal after step {target}: saved step {saved}"
    verdict(name, w, [first, status], [log1, log2], reference, note, [saved])

  # SIGTERM during start-up: nothing to save, exit at once.
  if "sigterm_start" in want:
    w = workdir("sigterm_start")
    proc, log1 = drill.start(w)
    wait_until(lambda: "Load dataset info" in read(log1), proc)
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    first = proc.wait()
    seconds = time.time() - sent
    status, log2 = drill.run(w)
    note = f"exited {seconds:.1f} s after the signal"
    verdict("sigterm_start", w, [first, status], [log1, log2], reference, note)

  # The latest checkpoint damaged (its largest files truncated).
  if "damaged" in want:
    w = workdir("damaged")
    shutil.copytree(reference["workdir"], w)
    for item in ("state", "ema_params"):
      files = glob.glob(
        os.path.join(w, "checkpoints", str(total), item, "**"), recursive=True
      )
      with open(
        max((p for p in files if os.path.isfile(p)), key=os.path.getsize), "r+b"
      ) as f:
        f.truncate(10)
    status, log = drill.run(w)
    aside = os.listdir(os.path.join(w, "damaged_checkpoints"))
    verdict("damaged", w, [status], [log], reference, f"kept aside: {aside}")

  # A full disk: a tmpfs smaller than one checkpoint, then grown.
  if "full_disk" in want:
    w = os.path.join(root, "tmpfs")
    if mount_tmpfs(w, "2500k", "full_disk"):
      try:
        first, log1 = drill.run(os.path.join(w, "run"))
        subprocess.run(["mount", "-o", "remount,size=64m", w], check=True)
        status, log2 = drill.run(os.path.join(w, "run"))
        verdict(
          "full_disk",
          os.path.join(w, "run"),
          [first, status],
          [log1, log2],
          reference,
        )
      finally:
        shutil.copytree(w, workdir("full_disk"))  # Kept for inspection.
        subprocess.run(["umount", w], check=False)

  # The same command launched twice on one workdir (a user, or a scheduler
  # that thinks the first died): the second is refused at once, naming the
  # first, which goes on unharmed.
  if "double_launch" in want:
    w = workdir("double_launch")
    proc, log1 = drill.start(w)
    wait_until(lambda: steps_logged(log1) >= 1, proc)
    sent = time.time()
    second, log2 = drill.run(w)
    seconds, first = time.time() - sent, proc.wait()
    note = f"second refused after {seconds:.1f} s"
    verdict("double_launch", w, [second, first], [log2, log1], reference, note)

  # A damaged train file: 2 KB of random bytes in the middle of one. The run
  # stops with the file and record named; repaired, the run resumes.
  if "damaged_data" in want:
    w = workdir("damaged_data")
    (path,) = glob.glob(
      os.path.join(data_dir, "bouncing_digits", "videos", "*", "*train*")
    )
    shutil.copy(path, os.path.join(root, "backup.array_record"))
    with open(path, "r+b") as f:
      f.seek(os.path.getsize(path) // 2)
      f.write(random.Random(0).randbytes(2048))
    first, log1 = drill.run(w)
    shutil.copy(os.path.join(root, "backup.array_record"), path)
    status, log2 = drill.run(w)
    errors, _ = complaints([log1])
    note = errors[0] if errors else "(no error named)"
    verdict("damaged_data", w, [first, status], [log1, log2], reference, note)

  # The sampler: a runlocal cascade of the reference (base) and a 2-step tsr1.
  cascade = os.path.join(root, "cascade")
  if {"cross_device_outdir", "long_video"} & want:
    os.makedirs(cascade)
    os.symlink(reference["workdir"], os.path.join(cascade, "base"))
    status, log, _ = drill.binary(
      "imagen_video_jax.train",
      "--config=configs/tsr1.py:runlocal",
      f"--workdir={cascade}/tsr1",
      f"--config.data.data_dir={data_dir}",
      "--config.batch_size=4",
      "--config.total_steps=2",
      "--config.optim.warmup_steps=1",
    )
    assert status == 0, f"the tsr1 run failed ({status}); see {log}"

  # --overwrite into an output folder that is a mount point (a tmpfs): the new
  # samples are staged on its filesystem, so the final moves cannot fail.
  if "cross_device_outdir" in want:
    out = os.path.join(root, "mounted_samples")
    if mount_tmpfs(out, "64m", "cross_device"):
      try:
        first, log1, _ = drill.sample(cascade, out, "--stages=base", "--seed=0")
        before = tree_digest(out)
        second, log2, _ = drill.sample(
          cascade, out, "--stages=base", "--seed=1", "--overwrite"
        )
        with open(os.path.join(out, "samples.jsonl")) as f:
          seeds = [json.loads(line)["seed"] for line in f]
        replaced = tree_digest(out) != before and seeds == [1, 2]
        stranded = [p for p in os.listdir(root) if p.startswith(".")] + [
          p for p in os.listdir(out) if p.startswith(".")
        ]
        errors, tracebacks = complaints([log1, log2])
        print(
          f"cross_device  | {first},{second:<9} | {'yes' if replaced else 'NO':8} |"
          f" n/a            | {', '.join(stranded) or 'none':6} |"
          f" {len(errors)} / {tracebacks:7} | new samples in place of the old:"
          f" {'yes' if replaced else 'NO'}"
        )
      finally:
        subprocess.run(["umount", out], check=False)

  # A long input video (20 s of 1080p) super-resolved by tsr1, which needs 2
  # frames of 8x8: the sampler's peak memory against a 64-pixel clip's.
  if "long_video" in want:
    peaks = {}
    for name, size, seconds in (("short", "64x64", 1), ("long", "1920x1080", 20)):
      clip = os.path.join(root, f"{name}.mp4")
      subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i"]
        + [f"testsrc2=size={size}:rate=30", "-t", str(seconds)]
        + ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", clip],
        check=True,
      )
      status, log, peaks[name] = drill.sample(
        cascade,
        os.path.join(root, f"sr_{name}"),
        "--stages=tsr1",
        f"--input_video={clip}",
      )
      assert status == 0, f"sampling {clip} failed ({status}); see {log}"
    print(
      f"long_video    | 0,0         | yes      | n/a            | none   | 0 / 0 / 0"
      f"   | peak RSS {peaks['long']:.2f} GB for 20 s of 1080p,"
      f" {peaks['short']:.2f} GB for 1 s of 64x64"
    )

  # A refused restart: another model on the finished reference.
  if "refused" in want:
    w = workdir("refused")
    shutil.copytree(reference["workdir"], w)
    before = tree_digest(w)
    status, log = drill.run(w, "--config.model.base_channels=16")
    unchanged = tree_digest(w) == before
    errors, tracebacks = complaints([log])
    print(
      f"refused       | {status:<11} | refused  | n/a            |"
      f" {'none' if unchanged else 'CHANGED':6} | {len(errors)} / {tracebacks:7} |"
      f" {errors[0] if errors else ''}"
    )

  print(f"{drill.runs} runs in {time.time() - t0:.0f} s; logs and workdirs in {root}")


if __name__ == "__main__":
  app.run(main)
