"""Guided progressive distillation (distill.py, distill_lib, diffusion/distillation).

Closed forms for the targets; the student at step 0 against the teacher; one
phase 1 (guidance distillation) and one phase 2 (halving) round learning on a
random teacher; config and teacher errors; the binary killed mid-round and
resumed bitwise; a distilled runlocal cascade sampled through sample.py.
"""

import json
import os
import shutil
import signal

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from test_sample import _NoData, save_runlocal_checkpoints
from test_train import (
  assert_same_losses,
  logged_losses,
  multihost,
  relocated,
  resume_copy,
  run,
  start,
  train_env,
  wait_for,
)
from test_video_unet import _random_params

from imagen_video_jax import (
  checkpointing,
  config_utils,
  distill_lib,
  optimizers,
  sample,
  train_lib,
)
from imagen_video_jax.diffusion import distillation, guidance, schedules
from imagen_video_jax.diffusion import parameterizations as param_lib
from imagen_video_jax.models import stage_model


# --------------------------------------------------------------------------- #
# The targets, against closed forms.
# --------------------------------------------------------------------------- #
def test_guided_x_is_eq5():
  xc, xu = jnp.array([[1.0, -2.0]]), jnp.array([[0.5, 1.0]])
  np.testing.assert_allclose(
    distillation.guided_x(xc, xu, jnp.array([3.0])), [[2.5, -11.0]]
  )


def test_halving_steps_and_the_paths_that_do_not_exist():
  assert distillation.halving_steps(256, 8) == [128, 64, 32, 16, 8]
  assert distillation.halving_steps(8, 8) == []
  for first, final in ((96, 8), (12, 8), (4, 8)):
    with pytest.raises(ValueError, match="start_sampling_steps"):
      distillation.halving_steps(first, final)


def test_one_ddim_step_to_the_target_lands_on_two_teacher_steps():
  """x~ is the x whose single DDIM step from z_t reaches the teacher's z_t''."""
  rng = np.random.default_rng(0)
  z = jnp.asarray(rng.standard_normal((3, 4, 2)), jnp.float32)
  lt, lm, ls = (
    jnp.array([-3.0, 0.0, 2.0]),
    jnp.array([-1.0, 1.0, 4.0]),
    jnp.array([1.0, 2.5, 7.0]),
  )

  def teacher_x(z_, logsnr):  # Any function of z and lambda will do.
    return jnp.tanh(z_ * (1 + 0.1 * schedules.expand_to(logsnr, z_)))

  z_mid = distillation.ddim_step(teacher_x(z, lt), z, lt, lm)
  z_s = distillation.ddim_step(teacher_x(z_mid, lm), z_mid, lm, ls)
  target = distillation.two_step_target(teacher_x, z, lt, lm, ls)
  np.testing.assert_allclose(
    distillation.ddim_step(target, z, lt, ls), z_s, rtol=1e-5, atol=1e-5
  )
  # A DDIM step is the deterministic sampler's step (samplers._ddim).
  a_s, s_s = schedules.alpha_sigma(schedules.expand_to(ls, z))
  eps = param_lib.eps_from_x(z, target, lt)
  np.testing.assert_allclose(
    distillation.ddim_step(target, z, lt, ls), a_s * target + s_s * eps, atol=1e-5
  )


def test_the_last_steps_target_is_the_teachers_x_hat_as_in_the_reference():
  # Salimans & Ho's reference (diffusion_distillation/dpm.py), written out
  # independently: two teacher DDIM steps from z_t; the x implied by where
  # they land; at t'' = 0 the second step's x_hat instead.
  logsnr_fn = schedules.get_logsnr_fn("cosine", -20.0, 8.0)  # The demo's lambda_max.
  n = 4
  i = jnp.array([1, 2, 4, 1])  # Steps t = i / n; i = 1 ends at t'' = 0.
  t = i / n
  lt, lm, ls = logsnr_fn(t), logsnr_fn(t - 0.5 / n), logsnr_fn(t - 1.0 / n)
  rng = np.random.default_rng(0)
  z = jnp.asarray(rng.standard_normal((4, 3, 2)), jnp.float32)

  def teacher_x(z_, logsnr):
    return jnp.tanh(z_ * (1 + 0.1 * schedules.expand_to(logsnr, z_)))

  def reference(z, l_t, l_mid, l_s, i):
    sig = lambda lam: jax.nn.sigmoid(lam)[:, None, None]  # noqa: E731
    x = teacher_x(z, l_t)
    eps = (z - jnp.sqrt(sig(l_t)) * x) / jnp.sqrt(sig(-l_t))
    z_mid = jnp.sqrt(sig(l_mid)) * x + jnp.sqrt(sig(-l_mid)) * eps
    x = teacher_x(z_mid, l_mid)
    eps = (z_mid - jnp.sqrt(sig(l_mid)) * x) / jnp.sqrt(sig(-l_mid))
    z_teacher = jnp.sqrt(sig(l_s)) * x + jnp.sqrt(sig(-l_s)) * eps
    frac = jnp.exp(0.5 * (jax.nn.softplus(l_t) - jax.nn.softplus(l_s)))[:, None, None]
    x_target = (z_teacher - frac * z) / (jnp.sqrt(sig(l_s)) - frac * jnp.sqrt(sig(l_t)))
    return jnp.where((i == 1)[:, None, None], x, x_target)

  got = distillation.two_step_target(teacher_x, z, lt, lm, ls, i == 1)
  np.testing.assert_allclose(got, reference(z, lt, lm, ls, i), rtol=1e-5, atol=1e-5)
  # At t'' = 0 it is exactly the teacher's second x_hat; the DDIM landing to
  # lambda(0) = 8 differs from it by a visible margin.
  z_mid = distillation.ddim_step(teacher_x(z, lt), z, lt, lm)
  np.testing.assert_array_equal(got[0], teacher_x(z_mid, lm)[0])
  landing = distillation.two_step_target(teacher_x, z, lt, lm, ls)
  assert np.max(np.abs(landing[0] - got[0])) > 1e-3
  np.testing.assert_array_equal(landing[1:3], got[1:3])  # Inside: unchanged.


def test_each_rounds_ema_warms_up_from_its_own_start():
  # A halving round starting at global step 40: its first update's EMA decay
  # is the warm-up's first, min(decay, 1 / 10), not that of step 40. (The
  # program of _learn's halving round: one compile for both tests.)
  config, _, student, tx, step, batch = _distill_step("halving", w_min=1.0, w_max=1.0)
  ema = jax.tree.map(lambda p: p + 1.0, student)
  state = dict(
    step=jnp.full((), 40, jnp.int32),
    params=student,
    ema_params=ema,
    teacher_params=student,
    opt_state=tx.init(student),
  )
  new, metrics = step(state, batch, None, np.int32(40), np.int32(4))
  assert metrics["finite"]
  d = min(config.ema_decay, 0.1)
  want = jax.tree.map(lambda e, p: d * e + (1 - d) * p, ema, new["params"])
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
    new["ema_params"],
    want,
  )


def test_student_grid_is_the_samplers_grid():
  logsnr_fn = schedules.get_logsnr_fn("cosine")
  lt, lm, ls, last = distillation.student_logsnrs(jax.random.key(0), 512, 4, logsnr_fn)
  t = schedules.cosine_t(lt)
  np.testing.assert_allclose(
    sorted(set(np.round(np.asarray(t), 4))), [0.25, 0.5, 0.75, 1]
  )
  np.testing.assert_allclose(schedules.cosine_t(lm), t - 0.125, atol=1e-4)
  np.testing.assert_allclose(schedules.cosine_t(ls), t - 0.25, atol=1e-4)
  np.testing.assert_array_equal(last, np.isclose(t, 0.25, atol=1e-4))


def test_rounds_and_what_each_checkpoint_samples_with():
  d = config_utils.load_config("configs/base.py:runlocal").distill
  d.guidance_steps, d.round_steps = 5, 3
  d.start_sampling_steps, d.final_sampling_steps = 8, 2
  rounds = distill_lib.rounds(d)
  assert [(r.kind, r.start, r.end, r.steps) for r in rounds] == [
    ("guidance", 0, 5, None),
    ("halving", 5, 8, 4),
    ("halving", 8, 11, 2),
  ]
  meta = [distill_lib.student_meta(rounds, s)["sampling_steps"] for s in (5, 6, 8, 11)]
  assert meta == [None, 4, 4, 2]


# --------------------------------------------------------------------------- #
# The student and its learning, in process (one compiled step each).
# --------------------------------------------------------------------------- #
def _student(spec="configs/base.py:runlocal", **distill):
  """(student config, model, random teacher params, merged student params)."""
  config = config_utils.load_config(spec)
  config.text.precomputed = True  # synthetic_batch's embeddings: no T5 compile.
  config.distill.update(distill, teacher="unused")
  student_config = distill_lib.student_config(config)
  tx, _ = optimizers.make_optimizer(student_config.distill.optim, 100)
  teacher_init = train_lib.make_init_fn(config, stage_model.make_model(config), tx)
  # Every path live (text included), unlike a fresh init's zero output layers.
  teacher = _random_params(jax.eval_shape(teacher_init, jax.random.key(0))["params"])
  model = stage_model.make_model(student_config)
  init_fn = train_lib.make_init_fn(student_config, model, tx)
  fresh = flax.core.meta.unbox(jax.jit(init_fn)(jax.random.key(0))["params"])
  student = distill_lib.merge_teacher(fresh, teacher, "teacher")
  return student_config, model, teacher, student


def _cond(config, batch):
  return train_lib.conditioning_inputs(
    config, batch, None, None, jax.random.key(0), jax.random.key(1), 0.0
  )


def test_student_equals_the_teacher_at_step_zero():
  config, model, teacher, student = _student()
  for key in ("extra_embed_0",):
    assert key in student and key not in teacher
  batch = train_lib.synthetic_batch(config, 2)
  cond = _cond(config, batch)
  z, logsnr = jnp.asarray(batch["video"]), jnp.array([-2.0, 3.0])
  teacher_model = stage_model.make_model(
    ml_collections.ConfigDict(
      dict(config.to_dict(), model=dict(config.model, num_extra_scalars=0))
    )
  )
  want = stage_model.apply(teacher_model, teacher, z, logsnr, cond)
  for w in (0.0, 7.5):
    got = stage_model.apply(
      model, student, z, logsnr, cond, extra_scalars=jnp.full((2, 1), w)
    )
    np.testing.assert_array_equal(got, want)
  # The embedding of w is live (only its output layer starts at zero).
  student["extra_embed_0"]["dense_1"]["kernel"] += 0.1
  moved = stage_model.apply(
    model, student, z, logsnr, cond, extra_scalars=jnp.full((2, 1), 7.5)
  )
  assert np.max(np.abs(moved - want)) > 1e-4


def _distill_step(kind, **distill):
  """(config, model, student params, optimizer, the jitted step of `kind`, a
  batch of 4 clips) for a student of a random teacher."""
  config, model, _, student = _student(**distill)
  # Adam's steps are lr-sized whatever the gradient: this random teacher, far
  # more sensitive to its weights than a trained one, learns at 1e-4.
  config.distill.optim.learning_rate = 1e-4
  tx, lr_fn = optimizers.make_optimizer(config.distill.optim, 100)
  step = jax.jit(distill_lib.make_distill_step(config, model, tx, lr_fn, kind))
  batch = jax.tree.map(jnp.asarray, train_lib.synthetic_batch(config, 4, seed=1))
  batch["is_image"] = jnp.zeros_like(batch["is_image"])
  return config, model, student, tx, step, batch


def _learn(kind, error_fn, steps=100, **distill):
  """Trains a student `steps` steps on one batch; its error before and after."""
  config, model, student, tx, step, batch = _distill_step(kind, **distill)
  state = dict(
    step=jnp.zeros((), jnp.int32),
    params=student,
    ema_params=student,
    teacher_params=student,
    opt_state=tx.init(student),
  )
  error = jax.jit(lambda p: error_fn(config, model, student, p, batch))
  before = float(error(state["params"]))
  losses = []
  for _ in range(steps):
    state, metrics = step(state, batch, None, np.int32(0), np.int32(4))
    assert metrics["finite"]
    losses.append(float(metrics["loss"]))
  return before, float(error(state["params"])), losses


def _x(model, params, z, logsnr, cond, w):
  out = stage_model.apply(model, params, z, logsnr, cond, extra_scalars=w[:, None])
  return param_lib.to_x_eps_v(out, z, logsnr, "v")[0]


def test_phase_1_approaches_the_guided_teacher():
  w = 2.0

  def error(config, model, teacher, params, batch):
    cond = _cond(config, batch)
    b = batch["video"].shape[0]
    logsnr = jnp.linspace(-6.0, 6.0, b)
    z = schedules.diffuse(
      batch["video"], logsnr, jax.random.normal(jax.random.key(9), batch["video"].shape)
    )
    ws = jnp.full((b,), w)
    null = dict(
      cond, text=jnp.zeros_like(cond["text"]), mask=jnp.zeros_like(cond["mask"])
    )
    target = distillation.guided_x(
      _x(model, teacher, z, logsnr, cond, ws),
      _x(model, teacher, z, logsnr, null, ws),
      ws,
    )
    return jnp.mean(jnp.square(_x(model, params, z, logsnr, cond, ws) - target))

  before, after, _ = _learn("guidance", error, w_min=w, w_max=w)
  assert after < 0.6 * before, (before, after)  # Measured: 0.48.


def test_halving_round_matches_two_teacher_steps_better():
  def error(config, model, teacher, params, batch):
    cond = _cond(config, batch)
    b = batch["video"].shape[0]
    logsnr_fn = schedules.get_logsnr_fn("cosine")
    lt, lm, ls, last = distillation.student_logsnrs(jax.random.key(5), b, 4, logsnr_fn)
    z = schedules.diffuse(
      batch["video"], lt, jax.random.normal(jax.random.key(9), batch["video"].shape)
    )
    ws = jnp.ones((b,))

    def teacher_x(z_, l_):
      return guidance.threshold(_x(model, teacher, z_, l_, cond, ws), "dynamic")

    target = distillation.two_step_target(teacher_x, z, lt, lm, ls, last)
    return jnp.mean(jnp.square(_x(model, params, z, lt, cond, ws) - target))

  before, after, _ = _learn("halving", error, w_min=1.0, w_max=1.0)
  assert after < 0.7 * before, (before, after)  # Measured: 0.60.


# --------------------------------------------------------------------------- #
# Bad input: each error names its culprit.
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
  "overrides, match",
  [
    (dict(w_min=3.0, w_max=1.0), "w_min=3.0 and w_max=1.0"),
    (dict(w_min=-1.0), "w_min=-1.0"),
    (
      dict(start_sampling_steps=12, final_sampling_steps=8),
      "start_sampling_steps=12 does not halve",
    ),
    (dict(guidance_steps=0), "guidance_steps=0"),
    (dict(round_steps=-1), "round_steps=-1"),
    (dict(loss="l1"), "distill.loss='l1'"),
    (dict(thresholding="soft"), "distill.thresholding='soft'"),
  ],
)
def test_bad_distill_config_is_named(overrides, match):
  config = config_utils.load_config("configs/base.py:runlocal")
  config.distill.update(overrides)
  with pytest.raises(ValueError, match=match):
    distill_lib.student_config(config)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
  """Trained-stage workdirs (random EMA params) of every runlocal stage."""
  root = tmp_path_factory.mktemp("teachers")
  save_runlocal_checkpoints(root)
  return root


def _base(teacher, **overrides):
  config = config_utils.load_config("configs/base.py:runlocal")
  config.distill.teacher = str(teacher)
  config.distill.update(overrides)
  return distill_lib.student_config(config)


def test_teacher_errors_name_the_workdir(teachers, tmp_path):
  with pytest.raises(ValueError, match="no checkpoints/"):
    distill_lib.load_teacher(_base(tmp_path / "missing"))
  with pytest.raises(ValueError, match=r"stage \{'name': 'tsr1'"):
    distill_lib.load_teacher(_base(teachers / "tsr1"))
  with pytest.raises(ValueError, match="distill.teacher is empty"):
    distill_lib.load_teacher(_base(""))
  params, step = distill_lib.load_teacher(_base(teachers / "base"))
  assert step == 1 and "conv_in" in params


def test_a_workdir_resumed_with_another_teacher_is_refused(teachers, tmp_path):
  config = _base(teachers / "base")
  config.distill.teacher_step = 1
  checkpointing.prepare_workdir(str(tmp_path), config)
  # No checkpoint yet: a start, which reads the teacher's workdir.
  assert distill_lib.check_resume(str(tmp_path), config) is None
  other = _base(tmp_path / "another_teacher")
  with pytest.raises(ValueError, match="at step 1; the config names"):
    distill_lib.check_resume(str(tmp_path), other)
  with pytest.raises(ValueError, match="a trained stage, not a distillation"):
    distill_lib.check_resume(str(teachers / "base"), config)


def test_merge_teacher_names_a_mismatched_parameter():
  _, _, teacher, student = _student()
  teacher["conv_in"]["kernel"] = np.zeros((3, 3, 3, 5), np.float32)
  with pytest.raises(ValueError, match="'conv_in/kernel' has shape"):
    distill_lib.merge_teacher(student, teacher, "Teacher 'x'")


# --------------------------------------------------------------------------- #
# The binary: kill and resume; the students sampled through the cascade.
# --------------------------------------------------------------------------- #
def distill_args(teacher, workdir, data_dir, *overrides):
  return [
    "--config=configs/base.py:runlocal",
    f"--config.distill.teacher={teacher}",
    f"--workdir={workdir}",
    f"--config.data.data_dir={data_dir}",
    "--config.batch_size=4",
    "--config.log_every=1",
    "--config.ckpt_every=2",
    "--config.keep_ckpts=10",
    "--config.distill.guidance_steps=4",
    "--config.distill.round_steps=6",
    *overrides,
  ]


@pytest.fixture(scope="module")
def distilled_run(tmp_path_factory, teachers, bouncing_digits_dir, compile_cache):
  """The runlocal base distilled straight through: rounds of 4, 6, 6 steps."""
  workdir = tmp_path_factory.mktemp("distilled")
  cache = compile_cache
  args = distill_args(teachers / "base", workdir, bouncing_digits_dir)
  run(args, train_env(cache), workdir / "log.txt", module="imagen_video_jax.distill")
  return args, cache, workdir


@pytest.mark.slow
@pytest.mark.xdist_group("distilled_run")
def test_distillation_writes_a_student_of_the_final_step_count(distilled_run):
  _, _, workdir = distilled_run
  losses = logged_losses(workdir)
  assert sorted(losses) == list(range(1, 17)) and np.all(
    np.isfinite(list(losses.values()))
  )
  log = (workdir / "log.txt").read_text()
  assert "Round 1 (halving, student steps 4) starts." in log
  assert "Round 2 (halving, student steps 2) starts." in log
  assert checkpointing.checkpoint_meta(str(workdir))["sampling_steps"] == 2
  assert checkpointing.checkpoint_meta(str(workdir), 10)["sampling_steps"] == 4
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["model"]["num_extra_scalars"] == 1
  assert (
    saved["distill"]["final_sampling_steps"] == 2
    and saved["distill"]["teacher_step"] == 1
  )


@pytest.mark.slow
@pytest.mark.xdist_group("distilled_run")
def test_sigkill_in_a_round_then_restart_repeats_the_straight_run_bitwise(
  distilled_run, teachers, tmp_path
):
  # The teacher's workdir is removed after the kill: the resume reads the
  # teacher params its own checkpoint holds.
  args, cache, straight = distilled_run
  teacher, workdir = tmp_path / "teacher", tmp_path / "student"
  shutil.copytree(teachers / "base", teacher)
  args = relocated(args, workdir, f"--config.distill.teacher={teacher}")
  env, log = train_env(cache), tmp_path / "log.txt"
  proc = start(args, env, log, module="imagen_video_jax.distill")
  wait_for(lambda: (workdir / "checkpoints" / "6").is_dir(), proc, what="checkpoint 6")
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  shutil.rmtree(teacher)
  run(args, env, log, module="imagen_video_jax.distill")
  with pytest.raises(ValueError, match="distils teacher"):  # And names it.
    distill_lib.check_resume(str(workdir), _base(teachers / "base"))
  losses = logged_losses(workdir)
  assert sorted(losses) == list(range(1, 17))
  assert losses == logged_losses(straight)  # Bitwise equal, the resumed steps too.


@pytest.mark.slow
@pytest.mark.xdist_group("distilled_run")
def test_a_halving_round_resumes_on_two_hosts_with_tensor_parallelism(
  distilled_run, tmp_path
):
  # Checkpoint 10 (inside round 1) of the one-device run, resumed by 2
  # processes of 4 devices on mesh (1,4,2): the batch over fsdp, tensor
  # parallelism within each host; the last 6 steps repeat the straight run's.
  args, cache, straight = distilled_run
  workdir = resume_copy(straight, tmp_path / "w", step=10)
  multihost(
    relocated(args, workdir, "--config.mesh.shape=(1,4,2)"),
    train_env(cache),
    tmp_path / "logs",
    module="imagen_video_jax.distill",
  )
  expected = logged_losses(straight)
  assert_same_losses(logged_losses(workdir), expected, range(11, 17))


def _students(teachers, distilled, root):
  """root/{base,tsr1,ssr1}_distilled: the binary's base, step-0 SR students."""
  os.symlink(distilled, root / "base_distilled")
  for name in ("tsr1", "ssr1"):
    config = config_utils.load_config(f"configs/{name}.py:runlocal")
    config.distill.teacher = str(teachers / name)
    config.distill.guidance_steps, config.distill.w_max = 0, 0.0
    config = distill_lib.student_config(config)
    config.distill.teacher_step = 1
    teacher, _ = distill_lib.load_teacher(config)
    workdir = str(root / f"{name}_distilled")
    checkpointing.prepare_workdir(workdir, config)
    model = stage_model.make_model(config)
    tx, _ = optimizers.make_optimizer(config.distill.optim, 1)
    shapes = jax.eval_shape(
      train_lib.make_init_fn(config, model, tx), jax.random.key(0)
    )
    fresh = jax.tree.map(
      lambda x: np.zeros(x.shape, x.dtype), flax.core.meta.unbox(shapes["params"])
    )
    params = distill_lib.merge_teacher(fresh, teacher, name)
    ckpt = checkpointing.Checkpointer(
      workdir, stage=checkpointing.stage_identity(config), async_save=False
    )
    state = dict(params=params, opt_state={}, ema_params=params, step=0)
    meta = distill_lib.student_meta(distill_lib.rounds(config.distill), 1)
    assert ckpt.save(1, state, _NoData(), meta=dict(meta, sampling_steps=2))
    ckpt.close()


@pytest.mark.slow
@pytest.mark.xdist_group("distilled_run")
def test_distilled_cascade_samples_end_to_end(distilled_run, teachers, tmp_path):
  root = tmp_path / "runs"
  root.mkdir()
  _students(teachers, distilled_run[2], root)
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("a red 3 moving up\n")
  cascade = config_utils.load_config("configs/cascade.py:runlocal,distilled=all")
  cascade.workdir_root = str(root)
  cascade.stages.base.guidance.high = 2.0  # Inside the runlocal students' [0, 15].
  for name in ("tsr1", "ssr1"):  # Students of an unguided stage (w_max = 0).
    cascade.stages[name].guidance.update(kind="constant", w=0.0)
  records = sample.sample(
    cascade,
    prompts_path=str(prompts),
    outdir=str(tmp_path / "samples"),
    stage_spec="base:ssr1",
    save_npy=True,
  )
  video = np.load(tmp_path / "samples" / records[0]["files"]["npy"])
  assert video.shape == (4, 16, 16, 3) and video.std() > 0
  assert {s["sampler"] for s in records[0]["stages"].values()} == {"distilled"}
  # Another step count, or a trained stage marked distilled, is refused.
  for override, match in (
    (dict(steps=4), "distilled for 2 sampling steps, not stages.base.steps=4"),
    (dict(workdir=str(teachers / "base")), "holds an undistilled model"),
  ):
    bad = cascade.copy_and_resolve_references()
    bad.stages.base.update(override)
    with pytest.raises(ValueError, match=match):
      sample.sample(
        bad,
        prompts_path=str(prompts),
        outdir=str(tmp_path / "refused"),
        stage_spec="base",
      )
