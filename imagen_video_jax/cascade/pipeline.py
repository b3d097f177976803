"""Chaining the stages of a cascade at sampling time (paper Fig. 6, Sec. 2.4-2.5).

`make_stage_fn` turns one stage (its training config and its sampler settings
from configs/cascade.py) into a function that samples a batch of videos from
text and, for an SR stage, the previous stage's videos. `sample.py` jits it
once per stage, shards the batch over a 1-D `data` mesh of all devices and
feeds each stage's output to the next. Every sample gets its own PRNG key, so
sample i of a run is the same video whatever the batch it was drawn in.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from imagen_video_jax import train_lib
from imagen_video_jax.cascade import conditioning, stages
from imagen_video_jax.diffusion import guidance, samplers, schedules

Array = jax.Array
# stage_fn(variables, keys [B, 2], text_emb [B, L, D], text_mask [B, L],
#          prev [B, T', H', W', 3] or None) -> video [B, T, H, W, 3] in [-1, 1].
StageFn = Callable[[dict, Array, Array, Array, Array | None], Array]


def make_mesh(devices: list[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A 1-D `data` mesh over all devices (the sampler is data parallel)."""
  devices = jax.devices() if devices is None else devices
  return jax.make_mesh(
    (len(devices),),
    ("data",),
    axis_types=(jax.sharding.AxisType.Auto,),
    devices=devices,
  )


def _model_fn(model, variables, weights, emb, mask, cond, aug, *, single, extra):
  """(z, logsnr, step) -> (cond_out, uncond_out) from one batched model call.

  The unconditional half sees zero text embeddings and an all-False mask: the
  same "no caption" the trainer's text dropout (config.diffusion.text_dropout)
  shows the model, which is what makes it the unconditional model of eq. 5.
  With `single` (no guidance, or a distilled student) only the conditional
  half is computed and returned twice; with `extra` the step's guidance weight
  goes to the model as an extra scalar (a guidance-distilled student, Meng et
  al., 2022, predicts the guided output itself).
  """

  def fn(z, logsnr, step):
    kw = {} if cond is None else dict(cond_video=cond, aug_logsnr=aug)
    if extra:
      kw["extra_scalars"] = jnp.full((z.shape[0], 1), weights[step])
    if single:
      out = model.apply(variables, z, logsnr, emb, mask, **kw)
      return out, out
    both = lambda x: jnp.concatenate([x, x])  # noqa: E731
    out = model.apply(
      variables,
      both(z),
      both(logsnr),
      jnp.concatenate([emb, jnp.zeros_like(emb)]),
      jnp.concatenate([mask, jnp.zeros_like(mask)]),
      **{k: both(v) for k, v in kw.items()},
    )
    return out[: z.shape[0]], out[z.shape[0] :]

  return fn


def make_stage_fn(
  config: ml_collections.ConfigDict,
  settings: ml_collections.ConfigDict,
  *,
  on_step: Callable[[int], None] | None = None,
) -> StageFn:
  """Builds one stage's sampling function (jit it; it has no Python side effects).

  Args:
    config: the stage's training config (stage shape, model, diffusion).
    settings: its sampler settings (configs/cascade.py `stage`).
    on_step: called on the host with each sampling step (progress bars); may
      be called several times per step (once per sample and device).

  Returns:
    stage_fn(variables, keys [B, 2], text_emb [B, L, D], text_mask [B, L],
    prev [B, T', H', W', 3] or None) -> video [B, T, H, W, 3] in [-1, 1].
  """
  frames, height, width = config.stage.frames, config.stage.height, config.stage.width
  steps = int(settings.steps)
  g = settings.guidance
  distilled = config.model.num_extra_scalars > 0  # Takes w as an input.
  unguided = g.kind == "constant" and g.w == 0  # No unconditional half needed.
  weights = guidance.guidance_weights(
    g.kind, steps, w=g.w, high=g.high, low=g.low, warmup_fraction=g.warmup_fraction
  )
  d = config.diffusion
  logsnr_fn = schedules.get_logsnr_fn(d.schedule, d.logsnr_min, d.logsnr_max)
  is_sr = config.stage.input is not None
  stages.check_augmentation([config.stage.name], [config], [settings.get("aug_logsnr")])
  model = train_lib.make_model(config)  # Checks the conditioning too.

  def one(variables, key, emb, mask, prev):
    """One sample: key [2], emb [L, D], mask [L], prev [T', H', W', 3] or None."""
    aug_key, sample_key = jax.random.split(key)
    cond = aug = None
    if is_sr:
      aug = jnp.full((1,), settings.aug_logsnr, jnp.float32)
      up = conditioning.upsample(prev[None], frames, height, width, d.temporal_upsample)
      cond, _ = conditioning.noise_augment(up, aug_key, aug)  # Sec. 2.5.
    model_fn = _model_fn(
      model,
      variables,
      weights,
      emb[None],
      mask[None],
      cond,
      aug,
      single=distilled or unguided,
      extra=distilled,
    )
    if on_step is not None:
      inner = model_fn

      def model_fn(z, logsnr, step):
        jax.debug.callback(on_step, step)
        return inner(z, logsnr, step)

    denoise_fn = guidance.guide(
      model_fn,
      # Eq. 5 with w = 0 leaves the single conditional output as it is.
      jnp.zeros_like(weights) if distilled or unguided else weights,
      parameterization=d.parameterization,
      space=g.space,
      thresholding=settings.thresholding,
      percentile=settings.percentile,
    )
    x = samplers.sample(
      denoise_fn,
      sample_key,
      (1, frames, height, width, config.model.out_channels),
      sampler=settings.sampler,
      steps=steps,
      gamma=settings.gamma,
      logsnr_fn=logsnr_fn,
      parameterization=d.parameterization,
    )
    return jnp.clip(x[0], -1.0, 1.0)

  def stage_fn(variables, keys, text_emb, text_mask, prev=None):
    if is_sr and prev is None:
      raise ValueError(f"Stage {config.stage.name!r} needs the previous video.")
    in_axes = (None, 0, 0, 0, 0 if is_sr else None)
    return jax.vmap(one, in_axes=in_axes)(
      variables, keys, text_emb, text_mask, prev if is_sr else None
    )

  return stage_fn


def as_variables(params: dict) -> dict:
  """Restored EMA params -> flax variables ({'params': ...})."""
  return params if set(params) == {"params"} else {"params": params}


def sampling_params(params: Any, config: ml_collections.ConfigDict) -> Any:
  """EMA params in the stage's compute dtype (config.dtype), for sampling.

  A bfloat16 stage casts its float32 weights to bfloat16 in every layer anyway;
  casting them once before they are replicated halves each device's copy (the
  paper base: 22.8 -> 11.4 GB, which fits a 16 GB v5e chip). A float32 stage's
  params come back unchanged.
  """
  dtype = jnp.dtype(config.dtype)

  def cast(x):
    if dtype == x.dtype or not jnp.issubdtype(x.dtype, jnp.floating):
      return x
    if isinstance(x, jax.ShapeDtypeStruct):
      return jax.ShapeDtypeStruct(x.shape, dtype, sharding=x.sharding)
    return x.astype(dtype)

  return jax.tree.map(cast, params)
