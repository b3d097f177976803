"""Chaining the stages of a cascade at sampling time (paper Fig. 6, Sec. 2.5-2.6).

`make_stage_fn` turns one stage (its training config and its sampler settings
from configs/cascade.py) into a function that samples a batch of videos from
text and, for an SR stage, the previous stage's videos. `sample.py` jits it
once per stage on a (data, frames) mesh of the host's devices and feeds each
stage's output to the next. The batch is split over `data`; with the stage's
`frame_shards` > 1 each sample's frames are split over `frames` too, so one
sample's activations spread over several chips (the paper's last SR stages
hold 20-430 GB of them, more than one 16 GB chip). Every sample gets its own
PRNG key, so sample i of a run is the same video whatever the batch it was
drawn in, and whatever the mesh.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections

from imagen_video_jax import sharding
from imagen_video_jax.cascade import conditioning, stages
from imagen_video_jax.diffusion import guidance, samplers, schedules
from imagen_video_jax.models import stage_model

Array = jax.Array
# stage_fn(variables, keys [B, 2], text_emb [B, L, D], text_mask [B, L],
#          prev [B, T', H', W', 3] or None) -> video [B, T, H, W, 3] in [-1, 1].
StageFn = Callable[[dict, Array, Array, Array, Array | None], Array]


MESH_AXES = ("data", "frames")
# Sampling's logical-axis rules: parameters replicated (each chip holds the whole
# model in its compute dtype), activations' frames over the `frames` mesh axis.
# The batch axis is vmapped over `data` (spmd_axis_name), so the model's own
# size-1 batch axis stays unsplit.
SAMPLING_RULES = tuple(
  (name, "frames" if name == "frames" else None) for name, _ in sharding.DEFAULT_RULES
)


def frame_shards(
  name: str, settings: ml_collections.ConfigDict, num_devices: int
) -> int:
  """Stage `name`'s `frame_shards` setting resolved for `num_devices` (-1 = all).

  Raises:
    ValueError: naming the stage and setting if it is not -1 or a divisor of
      the devices.
  """
  k = int(settings.get("frame_shards", 1))
  k = num_devices if k == -1 else k
  if k < 1 or num_devices % k:
    raise ValueError(
      f"Stage {name!r}: frame_shards={settings.get('frame_shards')} must be -1 "
      f"or divide the {num_devices} devices."
    )
  return k


def make_mesh(
  devices: list[jax.Device] | None = None, frame_shards: int = 1
) -> jax.sharding.Mesh:
  """A (data, frames) mesh over `devices` (default all): a sample's frames are
  split over `frame_shards` devices, the batch over the rest."""
  devices = jax.devices() if devices is None else devices
  if frame_shards < 1 or len(devices) % frame_shards:
    raise ValueError(
      f"frame_shards={frame_shards} does not divide the {len(devices)} devices."
    )
  return jax.make_mesh(
    (len(devices) // frame_shards, frame_shards),
    MESH_AXES,
    axis_types=(jax.sharding.AxisType.Auto,) * 2,
    devices=devices,
  )


def _model_fn(
  model, variables, weights, emb, mask, cond, aug, *, single, extra, batched=True
):
  """(z, logsnr, step) -> (cond_out, uncond_out) from one batched model call.

  The unconditional half sees zero text embeddings and an all-False mask: the
  same "no caption" the trainer's text dropout (config.diffusion.text_dropout)
  shows the model, which is what makes it the unconditional model of eq. 5.
  With `single` (no guidance, or a distilled student) only the conditional
  half is computed and returned twice; with `extra` the step's guidance weight
  goes to the model as an extra scalar (a guidance-distilled student, Meng et
  al., 2022, predicts the guided output itself). Without `batched` the two
  halves are two model calls, one after the other: the same outputs, half the
  activations live at once.
  """

  c = dict(text=emb, mask=mask)
  if cond is not None:
    c.update(video=cond, aug_logsnr=aug)
  params = None if variables is None else variables["params"]

  def fn(z, logsnr, step):
    extra_scalars = jnp.full((z.shape[0], 1), weights[step]) if extra else None
    if single:
      out = stage_model.apply(model, params, z, logsnr, c, extra_scalars=extra_scalars)
      return out, out
    return stage_model.apply_cond_uncond(
      model, params, z, logsnr, c, extra_scalars=extra_scalars, batched=batched
    )

  return fn


def make_stage_fn(
  config: ml_collections.ConfigDict,
  settings: ml_collections.ConfigDict,
  *,
  mesh: jax.sharding.Mesh | None = None,
  on_step: Callable[[int], None] | None = None,
) -> StageFn:
  """Builds one stage's sampling function (jit it; it has no Python side effects).

  Args:
    config: the stage's training config (stage shape, model, diffusion).
    settings: its sampler settings (configs/cascade.py `stage`).
    mesh: the (data, frames) mesh it runs on (`make_mesh`); with a `frames`
      axis over several devices each sample's frames are split over them.
      None: data parallel only.
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
  model = stage_model.make_model(config)  # Checks the conditioning too.
  shards = 1 if mesh is None else mesh.shape["frames"]
  if frames % shards:
    raise ValueError(
      f"Stage {config.stage.name!r}: its {frames} frames do not split over "
      f"frame_shards={shards} devices."
    )

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
      # With frames split, a batch of two passes would be merged with the split
      # frame axis in the per-frame layers, which GSPMD can't keep split.
      batched=g.batched and shards == 1,
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
    per_sample = (keys, text_emb, text_mask) + ((prev,) if is_sr else ())

    def batch_fn(*xs):
      # With frames split, the constraints inside `one` name `frames` and the
      # vmapped batch axis goes on `data`.
      return jax.vmap(
        lambda k, e, m, p=None: one(variables, k, e, m, p),
        spmd_axis_name="data" if shards > 1 else None,
      )(*xs)

    if shards == 1:
      return batch_fn(*per_sample)
    # Frames split: one sample per `data` group at a time (a loop over rounds),
    # since one sample is what did not fit a chip. Device i's shard of the batch
    # is rows [i r, (i + 1) r): (B, ...) -> (d, r, ...) -> (r, d, ...) keeps the
    # split on the `data` axis, so no sample moves between devices.
    d = mesh.shape["data"]
    if keys.shape[0] % d:
      raise ValueError(
        f"Stage {config.stage.name!r}: batch {keys.shape[0]} does not split "
        f"over the mesh's {d} data groups."
      )

    def rounds(x):
      return x.reshape(d, -1, *x.shape[1:]).swapaxes(0, 1)

    out = jax.lax.map(lambda xs: batch_fn(*xs), tuple(map(rounds, per_sample)))
    return out.swapaxes(0, 1).reshape(-1, *out.shape[2:])

  if shards > 1:  # The models' activation constraints take effect.
    return sharding.under_rules(stage_fn, mesh, SAMPLING_RULES)
  return stage_fn
