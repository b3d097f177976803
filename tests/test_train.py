"""End-to-end tests of the training binary (imagen_video_jax/train.py).

Each test runs `python -m imagen_video_jax.train` in subprocesses on the tiny
bouncing_digits build, with the runlocal configs; a shared persistent
compilation cache makes the repeated runs of one config compile once.
"""

import glob
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_checkpointing import damage

from imagen_video_jax import config_utils, leases, optimizers, reporting, train_lib
from imagen_video_jax.models import stage_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 30


def xla_flags(devices: int) -> str:
  """The suite's XLA flags (launch/test.sh) with `devices` CPU devices (last wins)."""
  return f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"


def train_env(compile_cache: str, devices: int = 1) -> dict[str, str]:
  env = dict(os.environ)
  env.update(
    XLA_FLAGS=xla_flags(devices),
    JAX_PLATFORMS="cpu",
    JAX_COMPILATION_CACHE_DIR=compile_cache,
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
  )
  return env


def train_args(stage: str, workdir, data_dir: str, *overrides: str) -> list[str]:
  return [
    f"--config=configs/{stage}.py:runlocal",
    f"--workdir={workdir}",
    f"--config.data.data_dir={data_dir}",
    "--config.batch_size=4",
    "--config.log_every=1",
    "--config.optim.warmup_steps=5",
    f"--config.total_steps={STEPS}",
    *overrides,
  ]


def start(args, env, log_path, module="imagen_video_jax.train") -> subprocess.Popen:
  with open(log_path, "ab") as log:
    return subprocess.Popen(
      [sys.executable, "-m", module, *args],
      cwd=ROOT,
      env=env,
      stdout=log,
      stderr=subprocess.STDOUT,
    )


def run(args, env, log_path, timeout=600, module="imagen_video_jax.train") -> None:
  proc = start(args, env, log_path, module)
  if proc.wait(timeout=timeout) != 0:
    with open(log_path) as f:
      tail = f.read()[-4000:]
    raise AssertionError(f"{module} exited with {proc.returncode}:\n{tail}")


def logged_losses(workdir, files=None) -> dict[int, float]:
  """step -> 'loss' from the TensorBoard event files (float32, exact)."""
  return reporting.logged_scalars(str(workdir), "loss", files)


def wait_for(predicate, proc, timeout=600, what=""):
  deadline = time.time() + timeout
  while not predicate():
    if proc.poll() is not None:
      raise AssertionError(f"train exited ({proc.returncode}) before {what}")
    if time.time() > deadline:
      proc.kill()
      raise AssertionError(f"timed out waiting for {what}")
    time.sleep(0.05)


def assert_loss_falls(losses: dict[int, float]) -> None:
  assert sorted(losses) == list(range(1, STEPS + 1))
  first = np.mean([losses[s] for s in range(1, 6)])
  last = np.mean([losses[s] for s in range(STEPS - 4, STEPS + 1)])
  assert last < 0.9 * first, (first, last)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, bouncing_digits_dir, compile_cache):
  """base runlocal trained STEPS steps straight through, checkpointing every 10."""
  workdir = tmp_path_factory.mktemp("straight")
  args = train_args("base", workdir, bouncing_digits_dir, "--config.ckpt_every=10")
  run(args, train_env(compile_cache), workdir / "log.txt")
  return args, logged_losses(workdir), (workdir / "log.txt").read_text()


@pytest.mark.slow
@pytest.mark.xdist_group("straight_run")
def test_base_loss_falls(straight_run):
  assert_loss_falls(straight_run[1])
  # Joint video-image training (paper Sec. 2.6): the default mixture gives
  # batches of clips [4, T, ...] and of images [4 * T, 1, ...], one step each.
  assert straight_run[2].count("Compiled the step for batch shapes") == 2
  assert "'is_image': (4,)" in straight_run[2]
  assert "'is_image': (8,)" in straight_run[2]  # runlocal base: T = 2.


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["tsr1", "ssr1"])
def test_sr_stage_loss_falls(stage, tmp_path, bouncing_digits_dir, compile_cache):
  run(
    train_args(stage, tmp_path, bouncing_digits_dir, "--config.ckpt_every=1000"),
    train_env(compile_cache),
    tmp_path / "log.txt",
  )
  assert_loss_falls(logged_losses(tmp_path))
  assert (tmp_path / "checkpoints" / str(STEPS)).is_dir()


@pytest.mark.slow
@pytest.mark.xdist_group("straight_run")
def test_sigkill_then_restart_repeats_the_straight_run_bitwise(
  straight_run, tmp_path, bouncing_digits_dir, compile_cache
):
  args, straight, _ = straight_run
  args = [a for a in args if not a.startswith("--workdir")] + [f"--workdir={tmp_path}"]
  env, log = train_env(compile_cache), tmp_path / "log.txt"
  proc = start(args, env, log)
  wait_for(
    lambda: (tmp_path / "checkpoints" / "10").is_dir(), proc, what="checkpoint 10"
  )
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  before = set(glob.glob(str(tmp_path / "events.out.*")))
  run(args, env, log)
  resumed = logged_losses(
    tmp_path, set(glob.glob(str(tmp_path / "events.out.*"))) - before
  )
  assert resumed, "the restarted run trained no step"
  first = min(resumed)
  assert first > 10 and sorted(resumed) == list(range(first, STEPS + 1))
  assert resumed == {s: straight[s] for s in resumed}  # Bitwise equal.


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly(tmp_path, bouncing_digits_dir, compile_cache):
  args = train_args(
    "base", tmp_path, bouncing_digits_dir, "--config.total_steps=100000"
  )
  log = tmp_path / "log.txt"
  proc = start(args, train_env(compile_cache), log)
  # The log writer is immediate (TensorBoard files are flushed in batches).
  wait_for(
    lambda: log.read_text().count("bad_steps_total=") >= 2, proc, what="two steps"
  )
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=300) == 143  # Not 0: a scheduler sees a stopped run.
  steps = [int(p) for p in os.listdir(tmp_path / "checkpoints") if p.isdigit()]
  assert len(steps) == 1 and 2 <= steps[0] < 100000
  assert max(logged_losses(tmp_path)) == steps[0]


@pytest.mark.slow
def test_sigint_during_start_up_exits_at_once(tmp_path, bouncing_digits_dir):
  """Nothing new to save while the step compiles: status 130 within seconds."""
  log = tmp_path / "log.txt"
  # A cache of its own: the compile must still be running when the signal comes.
  proc = start(
    train_args("base", tmp_path, bouncing_digits_dir),
    train_env(str(tmp_path / "cache")),
    log,
  )
  wait_for(lambda: "Load dataset info" in log.read_text(), proc, what="start-up")
  sent = time.time()
  proc.send_signal(signal.SIGINT)
  assert proc.wait(timeout=30) == 130
  assert time.time() - sent < 5
  assert "SIGINT: nothing new to save" in log.read_text()
  assert "Traceback" not in log.read_text()
  assert not glob.glob(str(tmp_path / "checkpoints" / "*"))


@pytest.mark.slow
@pytest.mark.xdist_group("straight_run")
def test_damaged_latest_checkpoint_is_moved_aside_and_repeated_bitwise(
  straight_run, tmp_path, compile_cache
):
  """Step 30's files truncated: the run restores 20, trains 21-30 as before."""
  args, straight, _ = straight_run
  source = next(a.split("=", 1)[1] for a in args if a.startswith("--workdir="))
  workdir = tmp_path / "run"
  shutil.copytree(source, workdir)
  damage(workdir / "checkpoints" / "30")
  before = set(glob.glob(str(workdir / "events.out.*")))
  args = [a for a in args if not a.startswith("--workdir")] + [f"--workdir={workdir}"]
  run(args, train_env(compile_cache), tmp_path / "log.txt")
  resumed = logged_losses(
    workdir, set(glob.glob(str(workdir / "events.out.*"))) - before
  )
  assert resumed == {s: straight[s] for s in range(21, STEPS + 1)}  # Bitwise equal.
  assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "20", "30"]
  assert os.listdir(workdir / "damaged_checkpoints") == ["30"]
  assert "Moved damaged checkpoint" in (tmp_path / "log.txt").read_text()


@pytest.mark.slow
def test_max_bad_steps_waits_for_the_save_and_reports_one_line(
  tmp_path, bouncing_digits_dir, compile_cache
):
  # At lr 1e6 every step from the 4th is non-finite: stops at step 13, while
  # the step-10 save is still being written.
  args = train_args(
    "base",
    tmp_path,
    bouncing_digits_dir,
    "--config.optim.learning_rate=1e6",
    "--config.ckpt_every=10",
  )
  log = tmp_path / "log.txt"
  proc = start(args, train_env(compile_cache), log)
  assert proc.wait(timeout=600) == 1
  assert os.listdir(tmp_path / "checkpoints") == ["10"]
  text = log.read_text()
  errors = [  # XLA's own slow-compile alarms (a loaded machine) are not the run's.
    line
    for line in text.splitlines()
    if line.startswith("E") and "slow_operation_alarm" not in line
  ]
  assert len(errors) == 1 and "RuntimeError: 10 non-finite steps in a row" in errors[0]
  assert "Traceback" not in text


def _error_lines(text: str) -> list[str]:
  return [
    line
    for line in text.splitlines()
    if line.startswith("E") and "slow_operation_alarm" not in line
  ]


def test_a_second_run_on_a_held_workdir_is_refused_at_once(
  tmp_path, bouncing_digits_dir, compile_cache
):
  # This test holds the lease, as a running job would; the trainer started on
  # the same workdir is refused before it compiles, naming the holder, and
  # leaves the workdir as it was.
  workdir = tmp_path / "w"
  lease = leases.Lease(str(workdir))
  lease.acquire()
  try:
    log = tmp_path / "log.txt"
    proc = start(train_args("base", workdir, bouncing_digits_dir), train_env(""), log)
    assert proc.wait(timeout=300) == 1
    (error,) = _error_lines(log.read_text())
    assert "WorkdirBusyError: Workdir" in error and "in use by another run" in error
    assert f"pid {os.getpid()}, started at" in error
    assert os.listdir(workdir) == [leases.NAME]
    assert lease.held
  finally:
    lease.release()


def test_a_failed_start_from_another_folder_writes_nothing(tmp_path, compile_cache):
  # Absolute config path, run from another working directory: the config
  # loads (its `from configs import common` too); the data is missing, so the
  # run fails before it starts and leaves no workdir behind (no config.json
  # to lock it to this network, no event file, no lease).
  workdir, log = tmp_path / "run", tmp_path / "log.txt"
  args = train_args("base", workdir, str(tmp_path / "no_data"))
  args[0] = f"--config={ROOT}/configs/base.py:runlocal"
  with open(log, "wb") as f:
    proc = subprocess.run(
      [sys.executable, "-m", "imagen_video_jax.train", *args],
      cwd=tmp_path,
      env=train_env(compile_cache),
      stdout=f,
      stderr=subprocess.STDOUT,
      timeout=300,
    )
  assert proc.returncode == 1
  text = log.read_text()
  (error,) = _error_lines(text)
  assert "bouncing_digits" in error and str(tmp_path / "no_data") in error
  assert "Traceback" not in text
  assert not workdir.exists()


def multihost(args, env, logs, module="imagen_video_jax.train", devices=4) -> None:
  """Runs `module` as 2 processes of `devices` CPU devices (simulated hosts)."""
  launch = ["bash", "launch/multihost.sh", "2", str(devices), str(logs), "--"]
  command = [*launch, sys.executable, "-m", module, *args]
  subprocess.run(command, cwd=ROOT, env=env, check=True, timeout=900)


def assert_same_losses(got: dict[int, float], expected: dict[int, float], steps):
  """The same global batches on another layout: equal up to the float rounding
  of reductions in another order."""
  assert sorted(got) == list(steps)
  np.testing.assert_allclose(
    [got[s] for s in steps], [expected[s] for s in steps], rtol=2e-5
  )


@pytest.fixture(scope="module")
def batch8_runs(tmp_path_factory, bouncing_digits_dir, compile_cache):
  """{stage: (args, workdir)}: base and tsr1 runlocal at a global batch of 8,
  4 steps on 1 process of 1 device, checkpoints at 2 and 4: the reference
  every other layout must repeat."""
  out = {}
  for stage in ("base", "tsr1"):
    workdir = tmp_path_factory.mktemp(f"batch8_{stage}")
    args = train_args(
      stage,
      workdir,
      bouncing_digits_dir,
      "--config.batch_size=8",
      "--config.mesh.shape=(1,1,1)",
      "--config.ckpt_every=2",
      "--config.optim.warmup_steps=2",
      "--config.total_steps=4",
    )
    run(args, train_env(compile_cache), workdir / "log.txt")
    out[stage] = args, workdir
  return out


def relocated(args, workdir, *overrides):
  """`args` with another workdir and `overrides` in place of the flags they name.

  (A tuple flag given twice is not replaced: config_flags joins the tuples.)
  """
  replaced = ["--workdir", *(o.split("=")[0] for o in overrides)]
  kept = [a for a in args if a.split("=")[0] not in replaced]
  return [*kept, f"--workdir={workdir}", *overrides]


def resume_copy(workdir, tmp_path, step):
  """A copy of `workdir` at its checkpoint `step`: later ones and the logs gone."""
  shutil.copytree(workdir, tmp_path, dirs_exist_ok=True)
  for path in (tmp_path / "checkpoints").iterdir():
    if int(path.name) > step:
      shutil.rmtree(path)
  for path in glob.glob(str(tmp_path / "events.out.*")):
    os.remove(path)
  return tmp_path


@pytest.mark.slow
@pytest.mark.xdist_group("batch8_runs")
def test_paper_mesh_on_two_hosts_trains_the_global_batch_and_resumes_on_one(
  batch8_runs, tmp_path, compile_cache
):
  # The paper configs' layout (1, -1, 1): FSDP over every chip, a data axis of
  # 1 smaller than the 2 hosts. Each host loads its devices' rows of the one
  # global batch. Then the run resumes on 1 process of 2 devices, mesh
  # (2,1,1), for step 3, and on 1 process of 4 devices, (1,4,1), for step 4.
  args, reference = batch8_runs["base"]
  expected = logged_losses(reference)
  two = relocated(
    args, tmp_path, "--config.mesh.shape=(1,8,1)", "--config.total_steps=2"
  )
  multihost(two, train_env(compile_cache), tmp_path / "logs")
  assert sorted(int(p) for p in os.listdir(tmp_path / "checkpoints")) == [2]
  assert_same_losses(logged_losses(tmp_path), expected, [1, 2])
  for step, devices, mesh in ((3, 2, "(2,1,1)"), (4, 4, "(1,4,1)")):
    one = relocated(
      args,
      tmp_path,
      f"--config.mesh.shape={mesh}",
      f"--config.total_steps={step}",
    )
    events = set(glob.glob(str(tmp_path / "events.out.*")))
    log = tmp_path / f"log{step}.txt"
    run(one, train_env(compile_cache, devices=devices), log)
    assert f"Restored checkpoint {tmp_path}/checkpoints/{step - 1}" in log.read_text()
    new = [f for f in glob.glob(str(tmp_path / "events.out.*")) if f not in events]
    assert_same_losses(logged_losses(tmp_path, new), expected, [step])


@pytest.mark.slow
@pytest.mark.xdist_group("batch8_runs")
@pytest.mark.parametrize("stage", ["base", "tsr1"])
def test_one_host_run_resumes_on_two_hosts_with_data_and_fsdp_axes(
  stage, batch8_runs, tmp_path, compile_cache
):
  # Checkpoint 2 of the one-device run, resumed by 2 processes of 4 devices on
  # mesh (2,4,1): the data axis spans the hosts, fsdp each host's devices.
  args, reference = batch8_runs[stage]
  workdir = resume_copy(reference, tmp_path / "w", step=2)
  multihost(
    relocated(args, workdir, "--config.mesh.shape=(2,4,1)"),
    train_env(compile_cache),
    tmp_path / "logs",
  )
  with open(tmp_path / "logs" / "process_1.log") as f:
    assert "Restored checkpoint" in f.read()
  assert_same_losses(logged_losses(workdir), logged_losses(reference), [3, 4])


def test_stage_shape_that_does_not_fit_the_model_is_named():
  config = config_utils.load_config("configs/base.py:runlocal")
  config.stage.height = 7  # Two U-Net levels need a multiple of 2.
  model = stage_model.make_model(config)
  tx, _ = optimizers.make_optimizer(config.optim, config.total_steps)
  init_fn = train_lib.make_init_fn(config, model, tx)
  with pytest.raises(ValueError, match="height 7"):
    jax.eval_shape(init_fn, jax.random.key(0))


@pytest.mark.parametrize(
  "schedule, expected",
  [
    # step:      0     50    100   500   800   900   1000
    ("constant", [0.0, 1.5, 3.0, 3.0, 3.0, 3.0, 3.0]),
    # Linear decay to 0 over the last 20% (steps 800-1000).
    ("wsd", [0.0, 1.5, 3.0, 3.0, 3.0, 1.5, 0.0]),
    # 0.5 * (1 + cos(pi * (s - 100) / 900)) after warmup.
    ("cosine", [0.0, 1.5, 3.0, 1.76047, 0.35093, 0.09046, 0.0]),
  ],
)
def test_learning_rate_schedules_match_closed_forms(schedule, expected):
  optim = config_utils.load_config("configs/base.py:runlocal").optim
  optim.learning_rate, optim.warmup_steps, optim.schedule = 3e-3, 100, schedule
  lr = optimizers.learning_rate_schedule(optim, 1000)
  got = [float(lr(s)) * 1e3 for s in (0, 50, 100, 500, 800, 900, 1000)]
  np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize(
  "key, value", [("schedule", "linear"), ("decay_fraction", 0.0)]
)
def test_bad_learning_rate_schedule_is_named(key, value):
  optim = config_utils.load_config("configs/base.py:runlocal").optim
  optim.schedule = "wsd"
  optim[key] = value
  with pytest.raises(ValueError, match=key):
    optimizers.learning_rate_schedule(optim, 1000)


@pytest.mark.slow  # Two compiles of the train step, ~40 s.
def test_the_late_loss_takes_over_at_its_step():
  def step_losses(steps, **diffusion):
    """The train step's loss at each of `steps` (same params, batch and seed)."""
    config = config_utils.load_config("configs/base.py:runlocal,batch=2")
    config.text.precomputed = True  # No text encoder to compile.
    config.diffusion.update(diffusion)
    model = stage_model.make_model(config)
    tx, lr_fn = optimizers.make_optimizer(config.optim, config.total_steps)
    state = train_lib.make_init_fn(config, model, tx)(jax.random.key(0))
    train_step = jax.jit(train_lib.make_train_step(config, model, tx, lr_fn))
    batch = train_lib.synthetic_batch(config, 2)
    out = []
    for step in steps:
      state["step"] = jnp.asarray(step, state["step"].dtype)
      out.append(float(train_step(state, batch, None)[1]["loss"]))
    return out

  # (That the early steps are v-MSE's exactly: test_diffusion_schedules.)
  late = step_losses([6, 7], loss="v_mse", late_loss="min_snr", late_loss_from=7)
  min_snr = step_losses([6, 7], loss="min_snr")
  assert late[0] != min_snr[0]  # Its last early step ...
  assert late[1] == min_snr[1]  # ... and its first late one.
