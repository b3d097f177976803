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

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from imagen_video_jax import sharding
from imagen_video_jax.cascade import conditioning, stages
from imagen_video_jax.diffusion import guidance, samplers, schedules
from imagen_video_jax.models import stage_model, video_unet

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


@dataclasses.dataclass(frozen=True, eq=False)
class StageSampler:
  """One stage's sampling loop: its fixed settings and the pure steps of a batch.

  Built by `make_stage_fn`, whose result is `stage_fn` (see `StageFn`). Reading
  order: `stage_fn` (the batch, over the mesh) -> `sample_one` (one sample:
  SR conditioning, guided denoiser, sampler) -> `predict` (one model
  evaluation: the conditional and unconditional predictions of eq. 5).
  """

  config: ml_collections.ConfigDict  # The stage's training config.
  settings: ml_collections.ConfigDict  # Its sampler settings (configs/cascade.py).
  model: video_unet.VideoUNet
  weights: Array  # [steps] guidance weight w of each step (eq. 5).
  mesh: jax.sharding.Mesh | None = None
  on_step: Callable[[int], None] | None = None

  @property
  def is_sr(self) -> bool:
    return self.config.stage.input is not None

  @property
  def distilled(self) -> bool:
    """A guidance-distilled student: takes w as an input (Meng et al., 2022)."""
    return self.config.model.num_extra_scalars > 0

  @property
  def conditional_only(self) -> bool:
    """No unconditional prediction needed: a student, or no guidance (w = 0)."""
    g = self.settings.guidance
    return self.distilled or (g.kind == "constant" and g.w == 0)

  @property
  def frame_shards(self) -> int:
    return 1 if self.mesh is None else self.mesh.shape["frames"]

  def predict(
    self, params: Any, cond: dict[str, Array], z: Array, logsnr: Array, step: Array
  ) -> tuple[Array, Array]:
    """(conditional, unconditional) predictions, each like z [1, T, H, W, C].

    The unconditional one sees the null caption (`stage_model.apply_cond_uncond`);
    where it is not needed the conditional one is returned twice. A student
    is given the step's w. With frames split, the two passes run one after the
    other: a batch of two would be merged with the split frame axis in the
    per-frame layers, which GSPMD can't keep split.
    """
    if self.on_step is not None:
      jax.debug.callback(self.on_step, step)
    extra = None
    if self.distilled:
      extra = jnp.full((z.shape[0], 1), self.weights[step])
    if self.conditional_only:
      out = stage_model.apply(self.model, params, z, logsnr, cond, extra_scalars=extra)
      return out, out
    batched = self.settings.guidance.batched and self.frame_shards == 1
    return stage_model.apply_cond_uncond(
      self.model, params, z, logsnr, cond, extra, batched=batched
    )

  def sample_one(
    self,
    variables: dict,
    key: Array,
    emb: Array,
    mask: Array,
    prev: Array | None = None,
  ) -> Array:
    """One sample: key [2], emb [L, D], mask [L], prev [T', H', W', 3] or None.

    Returns:
      The video [T, H, W, 3] in [-1, 1].
    """
    s, d, g = self.config.stage, self.config.diffusion, self.settings.guidance
    aug_key, sample_key = jax.random.split(key)
    cond = dict(text=emb[None], mask=mask[None])
    if self.is_sr:  # The input video, upsampled and noised at lambda' (Sec. 2.5).
      aug = jnp.full((1,), self.settings.aug_logsnr, jnp.float32)
      up = conditioning.upsample(
        prev[None], s.frames, s.height, s.width, d.temporal_upsample
      )
      cond["video"], _ = conditioning.noise_augment(up, aug_key, aug)
      cond["aug_logsnr"] = aug
    denoise_fn = guidance.guide(
      functools.partial(self.predict, variables["params"], cond),
      # Eq. 5 with w = 0 leaves the single conditional output as it is.
      jnp.zeros_like(self.weights) if self.conditional_only else self.weights,
      parameterization=d.parameterization,
      space=g.space,
      thresholding=self.settings.thresholding,
      percentile=self.settings.percentile,
    )
    x = samplers.sample(
      denoise_fn,
      sample_key,
      (1, s.frames, s.height, s.width, self.config.model.out_channels),
      sampler=self.settings.sampler,
      steps=int(self.settings.steps),
      gamma=self.settings.gamma,
      logsnr_fn=schedules.get_logsnr_fn(d.schedule, d.logsnr_min, d.logsnr_max),
      parameterization=d.parameterization,
    )
    return jnp.clip(x[0], -1.0, 1.0)

  def sample_many(self, variables: dict, *per_sample: Array) -> Array:
    """`sample_one` vmapped over the leading axis of keys, emb, mask (, prev).

    With frames split, the constraints inside `sample_one` name `frames` and
    the vmapped batch axis goes on `data`.
    """
    return jax.vmap(
      self.sample_one,
      in_axes=(None,) + (0,) * len(per_sample),
      spmd_axis_name="data" if self.frame_shards > 1 else None,
    )(variables, *per_sample)

  def stage_fn(
    self,
    variables: dict,
    keys: Array,
    text_emb: Array,
    text_mask: Array,
    prev: Array | None = None,
  ) -> Array:
    """keys [B, 2], text_emb [B, L, D], text_mask [B, L], prev [B, T', H', W', 3]
    or None -> videos [B, T, H, W, 3] in [-1, 1]."""
    if self.is_sr and prev is None:
      raise ValueError(f"Stage {self.config.stage.name!r} needs the previous video.")
    per_sample = (keys, text_emb, text_mask) + ((prev,) if self.is_sr else ())
    if self.frame_shards == 1:
      return self.sample_many(variables, *per_sample)
    # Frames split: one sample per `data` group at a time (a loop over rounds),
    # since one sample is what did not fit a chip. Device i's shard of the batch
    # is rows [i r, (i + 1) r): (B, ...) -> (d, r, ...) -> (r, d, ...) keeps the
    # split on the `data` axis, so no sample moves between devices.
    d = self.mesh.shape["data"]
    if keys.shape[0] % d:
      raise ValueError(
        f"Stage {self.config.stage.name!r}: batch {keys.shape[0]} does not split "
        f"over the mesh's {d} data groups."
      )
    rounds = tuple(x.reshape(d, -1, *x.shape[1:]).swapaxes(0, 1) for x in per_sample)
    out = jax.lax.map(lambda xs: self.sample_many(variables, *xs), rounds)
    return out.swapaxes(0, 1).reshape(-1, *out.shape[2:])


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
    prev [B, T', H', W', 3] or None) -> video [B, T, H, W, 3] in [-1, 1]: a
    `StageSampler`'s `stage_fn`.

  Raises:
    ValueError: naming the stage, for an SR stage's lambda' outside its
      training range, a bad conditioning config, or frames that do not split
      over the mesh's `frames` axis.
  """
  stages.check_augmentation([config.stage.name], [config], [settings.get("aug_logsnr")])
  g = settings.guidance
  sampler = StageSampler(
    config,
    settings,
    stage_model.make_model(config),  # Checks the conditioning too.
    guidance.guidance_weights(
      g.kind,
      int(settings.steps),
      w=g.w,
      high=g.high,
      low=g.low,
      warmup_fraction=g.warmup_fraction,
    ),
    mesh,
    on_step,
  )
  if config.stage.frames % sampler.frame_shards:
    raise ValueError(
      f"Stage {config.stage.name!r}: its {config.stage.frames} frames do not "
      f"split over frame_shards={sampler.frame_shards} devices."
    )
  if sampler.frame_shards > 1:  # The models' activation constraints take effect.
    return sharding.under_rules(sampler.stage_fn, mesh, SAMPLING_RULES)
  return sampler.stage_fn


def lower_stage(
  config: ml_collections.ConfigDict,
  settings: ml_collections.ConfigDict,
  variables: Any,
  mesh: jax.sharding.Mesh,
  text_shapes: tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct],
  video: jax.ShapeDtypeStruct | None,
  on_step: Any = None,
) -> jax.stages.Lowered:
  """One stage's sampling loop, lowered: fn(variables, keys, emb, mask, video).

  The batch's keys [B, 2], text embeddings [B, L, D], mask [B, L] and input
  video [B, T, H, W, 3] (None for a base stage) are split over the mesh's
  `data` axis; `variables` (arrays or ShapeDtypeStructs) keep their shardings.
  sample.py and benchmarks.compile lower the sampler's program with it.
  """
  sharded = jax.NamedSharding(mesh, jax.P("data"))

  def spec(x):  # A batch-sharded argument of the stage.
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharded)

  fn = jax.jit(
    make_stage_fn(config, settings, mesh=mesh, on_step=on_step),
    out_shardings=sharded,
  )
  keys = jax.ShapeDtypeStruct((text_shapes[0].shape[0], 2), jnp.uint32)
  prev = None if video is None else spec(video)
  return fn.lower(variables, spec(keys), *map(spec, text_shapes), prev)
