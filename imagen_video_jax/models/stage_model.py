"""The network of one cascade stage: built, fed, applied, and its variables.

A stage is data (DESIGN.md): its model is `VideoUNet(**config.model)` with the
run's compute dtype and remat. This module holds what training, distillation,
sampling and the parameter summary need of that network, each written once:
its construction and the checks of the config keys it depends on, zero inputs
of the right shapes, the width of the text it reads, its call on a
conditioning dict, the null caption the unconditional model sees (the text
dropout of training, paper Sec. 2.6.1, and the unconditional half of
classifier-free guidance, eq. 5), the conditional and unconditional outputs
from one call, and its parameters as the sampler's variables.
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from imagen_video_jax import config_utils
from imagen_video_jax.models import t5, video_unet

# How an SR stage's input video is brought to its frame count
# (config.diffusion.temporal_upsample; `cascade.conditioning.upsample`).
TEMPORAL = ("repeat", "linear")


def check_conditioning(name: str, config: ml_collections.ConfigDict) -> None:
  """Raises ValueError if a stage's SR-conditioning keys do not fit together.

  `model.cond_skip` offsets the network's v output by -sigma_t cond, which only
  means "predict the residual x - cond" for an SR stage with parameterization
  'v'; `diffusion.temporal_upsample` must be one of `TEMPORAL`.
  """
  how = config.diffusion.temporal_upsample
  if how not in TEMPORAL:
    raise ValueError(
      f"Stage {name!r}: diffusion.temporal_upsample={how!r}; expected one of "
      f"{TEMPORAL}."
    )
  if not config.model.cond_skip:
    return
  if config_utils.StageShape.of(config.stage.input) is None:
    raise ValueError(
      f"Stage {name!r}: model.cond_skip needs an SR stage (stage.input is None)."
    )
  if config.diffusion.parameterization != "v":
    raise ValueError(
      f"Stage {name!r}: model.cond_skip needs diffusion.parameterization='v'; "
      f"got {config.diffusion.parameterization!r}."
    )


def make_model(config: ml_collections.ConfigDict) -> video_unet.VideoUNet:
  """VideoUNet(**config.model) with the run's config.dtype and config.remat.

  Raises:
    ValueError: naming the key, for a bad dtype, remat or SR conditioning.
  """
  config_utils.check_compute(config)
  check_conditioning(config.stage.name, config)
  return video_unet.VideoUNet(
    **config.model, dtype=config.dtype, remat=config.remat != "none"
  )


def text_dim(config: ml_collections.ConfigDict) -> int:
  """Width D of the text embeddings (T5 d_model of config.text.t5_size)."""
  return t5.t5_config(config.text.t5_size).d_model


def dummy_inputs(
  config: ml_collections.ConfigDict,
  batch: int = 1,
  frames: int | None = None,
  height: int | None = None,
  width: int | None = None,
  text_length: int = 8,
) -> dict:
  """Zero inputs of the right shapes for the stage's VideoUNet init/apply.

  Frames and resolution default to the stage's (config.stage); parameter
  shapes do not depend on them.

  Returns:
    z [B, T, H, W, out_channels], logsnr [B], text [B, L, D], text_mask [B, L]
    and, as the model takes them, cond_video [B, T, H, W, cond_channels],
    aug_logsnr [B] and extra_scalars [B, num_extra_scalars].
  """
  m = config.model
  t = frames or config.stage.frames
  h = height or config.stage.height
  w = width or config.stage.width
  kw = dict(
    z=jnp.zeros((batch, t, h, w, m.out_channels), jnp.float32),
    logsnr=jnp.zeros((batch,), jnp.float32),
    text=jnp.zeros((batch, text_length, text_dim(config)), jnp.float32),
    text_mask=jnp.ones((batch, text_length), bool),
  )
  if m.cond_channels:
    kw["cond_video"] = jnp.zeros((batch, t, h, w, m.cond_channels), jnp.float32)
  if m.use_aug_embedding:
    kw["aug_logsnr"] = jnp.zeros((batch,), jnp.float32)
  if m.num_extra_scalars:
    kw["extra_scalars"] = jnp.zeros((batch, m.num_extra_scalars), jnp.float32)
  return kw


# --------------------------------------------------------------------------- #
# The null caption and the model's call.
# --------------------------------------------------------------------------- #
def null_caption(text: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The unconditional model's caption: zero embeddings [B, L, D], mask [B, L] False."""
  return jnp.zeros_like(text), jnp.zeros_like(mask)


def drop_text(
  text: jax.Array, mask: jax.Array, rng: jax.Array, rate: float
) -> tuple[jax.Array, jax.Array]:
  """Classifier-free guidance dropout (paper Sec. 2.6.1, Ho & Salimans 2022).

  Args:
    text: [B, L, D] text embeddings.
    mask: [B, L] bool, valid tokens.
    rng: PRNG key.
    rate: probability that an example is made unconditional.

  Returns:
    (text, mask) with the dropped examples' embeddings and mask zeroed: the
    `null_caption` the sampler's unconditional pass sees.
  """
  keep = jax.random.bernoulli(rng, 1.0 - rate, text.shape[:1])
  return text * keep[:, None, None].astype(text.dtype), mask & keep[:, None]


def apply(
  model: Any,
  params: Any,
  z: jax.Array,
  logsnr: jax.Array,
  cond: dict[str, jax.Array],
  *,
  extra_scalars: jax.Array | None = None,
  rng_dropout: jax.Array | None = None,
) -> jax.Array:
  """The stage's network on z_t [B, T, H, W, C] at logsnr [B].

  Args:
    model: the VideoUNet (`make_model`).
    params: its parameters (the 'params' collection).
    z: z_t [B, T, H, W, C].
    logsnr: lambda_t [B].
    cond: text [B, L, D] and mask [B, L]; optionally is_image [B] and, for an
      SR stage, video [B, T, H, W, C'] (its input, upsampled and noised) and
      aug_logsnr [B] (train_lib.conditioning_inputs' dict).
    extra_scalars: [B, K], a distilled student's guidance weight.
    rng_dropout: turns dropout on (train mode) when given.

  Returns:
    The parameterization's prediction, [B, T, H, W, C] float32.
  """
  return model.apply(
    {"params": params},
    z,
    logsnr,
    cond["text"],
    cond["mask"],
    cond_video=cond.get("video"),
    aug_logsnr=cond.get("aug_logsnr"),
    is_image=cond.get("is_image"),
    extra_scalars=extra_scalars,
    train=rng_dropout is not None,
    rngs={} if rng_dropout is None else {"dropout": rng_dropout},
  )


def apply_cond_uncond(
  model: Any,
  params: Any,
  z: jax.Array,
  logsnr: jax.Array,
  cond: dict[str, jax.Array],
  extra_scalars: jax.Array | None = None,
  *,
  batched: bool = True,
) -> tuple[jax.Array, jax.Array]:
  """The conditional and the unconditional prediction (eq. 5's two terms).

  The unconditional one sees the `null_caption`, as training's text dropout
  showed it the model; everything else is the same. Arguments as `apply`.

  Args:
    batched: one call on the batch of 2B (both halves stacked); False: two
      calls, one after the other, the same outputs with half the activations
      alive at once.

  Returns:
    (conditional, unconditional), each [B, T, H, W, C].
  """
  uncond = dict(cond)
  uncond["text"], uncond["mask"] = null_caption(cond["text"], cond["mask"])
  if not batched:
    out = apply(model, params, z, logsnr, cond, extra_scalars=extra_scalars)
    # The barrier makes the unconditional call wait for the conditional one,
    # so XLA can't overlap (and hold the activations of) both.
    out, z = jax.lax.optimization_barrier((out, z))
    return out, apply(model, params, z, logsnr, uncond, extra_scalars=extra_scalars)
  pair = {k: jnp.concatenate([cond[k], uncond[k]]) for k in cond}
  if extra_scalars is not None:
    extra_scalars = _twice(extra_scalars)
  out = apply(
    model, params, _twice(z), _twice(logsnr), pair, extra_scalars=extra_scalars
  )
  return out[: z.shape[0]], out[z.shape[0] :]


def _twice(x: jax.Array) -> jax.Array:
  return jnp.concatenate([x, x])


# --------------------------------------------------------------------------- #
# The parameters as the sampler holds them.
# --------------------------------------------------------------------------- #
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
