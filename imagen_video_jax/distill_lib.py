"""Guided progressive distillation of one stage (paper Sec. 2.7): the pieces.

`distill.py` wires these to the mesh, the data and the checkpoints, as
`train.py` does with `train_lib`. A run is a list of rounds over one global
step counter: round 0 is phase 1 (guidance distillation, Meng et al., 2022)
unless `distill.guidance_steps` is 0, then phase 2 (halving): one round per
factor of two from `distill.start_sampling_steps` to
`distill.final_sampling_steps` sampling steps (Salimans & Ho, 2022).
The train state is train.py's plus `teacher_params`; the teacher and the
student are the same network, one that takes the guidance weight w as an
extra scalar. At each new round the student's EMA becomes the teacher and the
new student, and the optimizer starts afresh.
"""

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import traverse_util

from imagen_video_jax import checkpointing, train_lib
from imagen_video_jax.diffusion import distillation, guidance, losses, schedules
from imagen_video_jax.diffusion import parameterizations as param_lib
from imagen_video_jax.models import stage_model, video_unet

KINDS = ("guidance", "halving")


@dataclasses.dataclass(frozen=True)
class Round:
  """One round: global steps [start, end) of `kind`.

  `steps` is the student's sampling step count at the end of the round (None
  after phase 1: a guidance-distilled student samples with any step count).
  """

  index: int
  kind: str
  start: int
  end: int
  steps: int | None


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the `distill` key that is out of range."""
  d = config.distill
  if d.w_min < 0 or d.w_max < d.w_min:
    raise ValueError(
      f"config.distill.w_min={d.w_min} and w_max={d.w_max}: need 0 <= w_min <= w_max."
    )
  for key in ("guidance_steps", "round_steps"):
    if d[key] < 0:
      raise ValueError(f"config.distill.{key}={d[key]} must be >= 0.")
  if d.guidance_steps == 0 and d.w_max > 0:
    raise ValueError(
      f"config.distill.guidance_steps=0 skips phase 1, but w_max={d.w_max} > 0: "
      "halving needs a guided teacher (set guidance_steps > 0 or w_max = 0)."
    )
  halvings = distillation.halving_steps(d.start_sampling_steps, d.final_sampling_steps)
  if halvings and d.round_steps < 1:
    raise ValueError(
      f"config.distill.round_steps={d.round_steps}: {len(halvings)} halving "
      "rounds need round_steps >= 1."
    )
  if not halvings and d.guidance_steps == 0:
    raise ValueError(
      "config.distill: guidance_steps=0 and start_sampling_steps =="
      " final_sampling_steps leave nothing to distil."
    )
  if d.loss not in losses.LOSSES:
    raise ValueError(
      f"config.distill.loss={d.loss!r}; expected one of {losses.LOSSES}."
    )
  if d.thresholding not in guidance.THRESHOLDING:
    raise ValueError(
      f"config.distill.thresholding={d.thresholding!r}; expected one of "
      f"{guidance.THRESHOLDING}."
    )


def rounds(distill: ml_collections.ConfigDict) -> list[Round]:
  """The run's rounds in order (see the module docstring)."""
  out, start = [], 0
  if distill.guidance_steps:
    out.append(Round(0, "guidance", 0, distill.guidance_steps, None))
    start = distill.guidance_steps
  halvings = distillation.halving_steps(
    distill.start_sampling_steps, distill.final_sampling_steps
  )
  for n in halvings:
    out.append(Round(len(out), "halving", start, start + distill.round_steps, n))
    start += distill.round_steps
  return out


def round_of(all_rounds: list[Round], step: int) -> Round:
  """The round that global step `step` (0-based, about to run) belongs to."""
  for r in all_rounds:
    if r.start <= step < r.end:
      return r
  return all_rounds[-1]


def student_meta(all_rounds: list[Round], step: int) -> dict[str, Any]:
  """What a checkpoint after `step` steps holds: its round and sampling steps."""
  r = round_of(all_rounds, max(step - 1, 0))
  return dict(round=r.index, kind=r.kind, sampling_steps=r.steps)


def student_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The stage config of the student: the teacher's, taking w, for all rounds.

  Raises:
    ValueError: for a bad `distill` block, naming the key.
  """
  check_config(config)
  student = ml_collections.ConfigDict(config.to_dict())  # Unlocked copy.
  student.model.num_extra_scalars = 1  # The guidance weight w.
  student.total_steps = rounds(config.distill)[-1].end
  student.ema_decay = config.distill.ema_decay
  if config.distill.teacher:  # Recorded absolute: a resume must name the same.
    student.distill.teacher = os.path.abspath(config.distill.teacher)
  return student


def load_teacher(config: ml_collections.ConfigDict) -> tuple[Any, int]:
  """The teacher's EMA params (host numpy) and its checkpoint step.

  Raises:
    ValueError: naming the workdir if it is missing, holds no checkpoint,
      belongs to another stage, or holds a distilled student.
  """
  workdir = config.distill.teacher
  if not workdir:
    raise ValueError("config.distill.teacher is empty: give the stage's workdir.")
  where = f"Teacher workdir {workdir!r}"
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise ValueError(f"{where} holds no checkpoints/ (train the stage first).")
  saved = checkpointing.saved_config(workdir, config, where)
  if saved is not None and saved["model"].get("num_extra_scalars", 0):
    raise ValueError(f"{where} holds a distilled student, not a trained stage.")
  try:  # The newest readable checkpoint, its stage checked first (as sample.py).
    params, meta = checkpointing.restore_ema(
      workdir, stage=checkpointing.stage_identity(config)
    )
  except ValueError as e:
    raise ValueError(f"{where}: {e}") from e
  return stage_model.as_variables(params)["params"], int(meta["step"])


def check_resume(workdir: str, config: ml_collections.ConfigDict) -> int | None:
  """Refuses a workdir that is not this distillation's (nothing is written).

  Returns:
    The teacher step the workdir's checkpoints distil, whose params each of
    them holds: a resume needs no teacher workdir. None when it holds no
    checkpoint (a fresh start reads the teacher's).

  Raises:
    ValueError: naming the workdir if it holds a trained stage, another
      stage, or a distillation of another teacher workdir.
  """
  where = f"Workdir {workdir!r}"
  saved = checkpointing.saved_config(workdir, config, where)
  has_checkpoints = checkpointing.latest_step(workdir) is not None
  if saved is None:
    if has_checkpoints:
      raise ValueError(f"{where} holds checkpoints but no config.json.")
    return None
  before = saved.get("distill", {})
  if "teacher_step" not in before:
    raise ValueError(f"{where} holds a trained stage, not a distillation.")
  if before["teacher"] != config.distill.teacher:
    raise ValueError(
      f"{where} distils teacher {before['teacher']!r} at step"
      f" {before['teacher_step']}; the config names {config.distill.teacher!r}."
      " Use a new workdir for another teacher."
    )
  return int(before["teacher_step"]) if has_checkpoints else None


def merge_teacher(student: Any, teacher: Any, where: str) -> Any:
  """The student's params with every tensor the teacher has taken from it.

  Only the student's new inputs (`extra_embed_*`, zero at their output) keep
  their fresh values, so the student starts as exactly the teacher.

  Raises:
    ValueError: naming `where` and the first parameter that differs.
  """
  flat_s = traverse_util.flatten_dict(student, sep="/")
  flat_t = traverse_util.flatten_dict(teacher, sep="/")
  for key in flat_t:
    if key not in flat_s:
      raise ValueError(f"{where} has parameter {key!r} that the student lacks.")
  out = {}
  for key, value in flat_s.items():
    if key in flat_t:
      if tuple(flat_t[key].shape) != tuple(value.shape):
        raise ValueError(
          f"{where}: parameter {key!r} has shape {tuple(flat_t[key].shape)}; the "
          f"stage config expects {tuple(value.shape)} (another model config?)."
        )
      out[key] = flat_t[key]
    elif key.startswith("extra_embed"):
      out[key] = value
    else:
      raise ValueError(f"{where} lacks parameter {key!r} of the stage's model.")
  return traverse_util.unflatten_dict(out, sep="/")


def make_start_fn(tx: optax.GradientTransformation) -> Callable[[dict, Any], dict]:
  """(state, teacher) -> the state of a round that starts from `teacher`.

  Student, EMA and teacher all become `teacher`; the optimizer starts afresh.
  `teacher` is the trained stage's params (merged) at round 0, the previous
  round's student EMA after.
  """

  def start(state, teacher):
    return dict(
      state,
      params=teacher,
      ema_params=teacher,
      teacher_params=teacher,
      opt_state=tx.init(teacher),
    )

  return start


def make_distill_step(
  config: ml_collections.ConfigDict,
  model: video_unet.VideoUNet,
  tx: optax.GradientTransformation,
  lr_fn: Callable[[jax.Array], jax.Array],
  kind: str,
  text_apply: Callable[..., jax.Array] | None = None,
  batch_sharding: jax.sharding.Sharding | None = None,
) -> Callable[..., tuple[dict[str, Any], dict[str, jax.Array]]]:
  """The step (state, batch, text_params, round_start, steps) -> (state, metrics).

  Args:
    config: the student's stage config (`student_config`).
    model: the student VideoUNet (num_extra_scalars = 1); the teacher is the
      same network with `state['teacher_params']`.
    tx: the round's optimizer; lr_fn: its schedule (for the report).
    lr_fn: round step -> learning rate.
    kind: 'guidance' (phase 1) or 'halving' (phase 2).
    text_apply: the frozen text encoder, None for precomputed embeddings.
    batch_sharding: sharding constraint of the batch's activations.

  The step's int32 scalars: `round_start` (the round's first global step, for
  the learning rate and the EMA's warm-up) and `steps` (the student's N, halving only). Randomness
  is `fold_in(seed, step)` as in training, so a resumed round repeats the
  uninterrupted one exactly. Teacher and student see the same text, the same
  SR conditioning at the same lambda' and the same w ~ U[w_min, w_max].
  """
  if kind not in KINDS:
    raise ValueError(f"Unknown round kind {kind!r}; expected one of {KINDS}.")
  d, diffusion = config.distill, config.diffusion
  parameterization = diffusion.parameterization
  logsnr_fn = schedules.get_logsnr_fn(
    diffusion.schedule, diffusion.logsnr_min, diffusion.logsnr_max
  )

  def to_x(out, z, logsnr):
    return param_lib.to_x_eps_v(out, z, logsnr, parameterization)[0]

  def step_fn(state, batch, text_params, round_start, steps):
    if batch_sharding is not None:
      batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
    rng = jax.random.fold_in(jax.random.key(config.seed), state["step"])
    rng_cond, rng_t, rng_w, rng_noise, rng_dropout = jax.random.split(rng, 5)
    cond = train_lib.conditioning_inputs(
      config, batch, text_apply, text_params, rng_cond, rng_cond, 0.0
    )
    x = batch["video"]
    b = x.shape[0]
    w = jax.random.uniform(rng_w, (b,), minval=d.w_min, maxval=d.w_max)
    teacher = jax.lax.stop_gradient(state["teacher_params"])
    noise = jax.random.normal(rng_noise, x.shape, x.dtype)

    if kind == "guidance":  # Phase 1: x~ = (1 + w) x_c - w x_u (eq. 5).
      logsnr = logsnr_fn(losses.sample_t(rng_t, b, diffusion.t_sampling))
      z = schedules.diffuse(x, logsnr, noise)
      pair = stage_model.apply_cond_uncond(
        model, teacher, z, logsnr, cond, extra_scalars=jnp.zeros((b, 1))
      )
      # x of both halves at once, as one [2B] array: the bits of the target
      # depend on how XLA fuses this.
      both = lambda a: jnp.concatenate([a, a])  # noqa: E731
      x_both = to_x(jnp.concatenate(pair), both(z), both(logsnr))
      target = distillation.guided_x(x_both[:b], x_both[b:], w)
      loss_name = diffusion.loss
    else:  # Phase 2: one student step = two teacher DDIM steps.
      logsnr, logsnr_mid, logsnr_s, last = distillation.student_logsnrs(
        rng_t, b, steps, logsnr_fn
      )
      z = schedules.diffuse(x, logsnr, noise)

      def teacher_x(z_, l_):
        out = stage_model.apply(model, teacher, z_, l_, cond, extra_scalars=w[:, None])
        return guidance.threshold(to_x(out, z_, l_), d.thresholding)

      target = distillation.two_step_target(
        teacher_x, z, logsnr, logsnr_mid, logsnr_s, last
      )
      loss_name = d.loss
    target = jax.lax.stop_gradient(target)
    eps_target = param_lib.eps_from_x(z, target, logsnr)

    def loss_fn(params):
      out = stage_model.apply(
        model,
        params,
        z,
        logsnr,
        cond,
        extra_scalars=w[:, None],
        rng_dropout=rng_dropout,
      )
      per_example = losses.weighted_loss(
        out,
        target,
        eps_target,
        z,
        logsnr,
        parameterization=parameterization,
        loss=loss_name,
      )
      return per_example.mean(), per_example

    new, loss, per_example, metrics = train_lib.update_state(
      state,
      loss_fn,
      tx,
      ema_decay=config.ema_decay,
      remat=config.remat,
      ema_step=state["step"] - round_start,  # Each round's EMA warms up anew.
    )
    sums, counts = train_lib.bucket_sums(per_example, logsnr)
    metrics.update(
      loss=loss,
      lr=lr_fn(state["step"] - round_start),
      bucket_sums=sums,
      bucket_counts=counts,
    )
    return new, metrics

  return step_fn
