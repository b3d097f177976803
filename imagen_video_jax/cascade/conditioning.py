"""Conditioning of a super-resolution stage on the previous stage's video.

Paper Sec. 2.2 / Fig. 6: an SSR stage sees the low-resolution video resized
bilinearly to its own resolution, a TSR stage sees it with frames repeated to
its own frame count; either way the result is concatenated channel-wise with
z_t by the U-Net. Sec. 2.5 (noise conditioning augmentation): the conditioning
video is itself diffused to a logSNR lambda' (random in training, fixed at
sampling) and the model is told lambda'. Training and sampling share these two
functions so that the model sees the same conditioning in both.
"""

import jax
import jax.numpy as jnp

from imagen_video_jax.diffusion import schedules
from imagen_video_jax.models import stage_model


def upsample(
  video: jax.Array, frames: int, height: int, width: int, temporal: str = "repeat"
) -> jax.Array:
  """Brings a video to a stage's frame count and resolution.

  Args:
    video: [B, T', H', W', C] previous stage's output.
    frames: T, a multiple of T' = T / r.
    height: H (bilinear resize).
    width: W (bilinear resize).
    temporal: how frames are filled in when T > T'. 'repeat' (paper Sec. 2.2):
      output frame i is input frame i // r. 'linear': input frame k lands on
      output frame k r and the frames between blend its two neighbours linearly
      in time (after the last input frame, it is repeated).

  Returns:
    [B, T, H, W, C] in video's dtype.
  """
  if video.ndim != 5:
    raise ValueError(f"video must be [B, T, H, W, C]; got shape {video.shape}.")
  b, t_in, h_in, w_in, c = video.shape
  if frames <= 0 or frames % t_in:
    raise ValueError(
      f"frames={frames} is not a positive multiple of the input's {t_in} frames."
    )
  if height <= 0 or width <= 0:
    raise ValueError(f"height={height}, width={width} must be positive.")
  if temporal not in stage_model.TEMPORAL:
    raise ValueError(f"temporal={temporal!r}; expected one of {stage_model.TEMPORAL}.")
  r = frames // t_in
  if r > 1 and temporal == "repeat":
    # Temporal SR input: frame i of the output is frame i // r of the input.
    video = jnp.repeat(video, r, axis=1)
  elif r > 1:
    pos = jnp.arange(frames) / r  # Output frame i sits at input time i / r.
    lo = jnp.floor(pos).astype(jnp.int32)
    hi = jnp.minimum(lo + 1, t_in - 1)
    frac = (pos - lo).astype(video.dtype)[None, :, None, None, None]
    video = (1 - frac) * video[:, lo] + frac * video[:, hi]
  if (height, width) != (h_in, w_in):
    # Spatial SR input: bilinear resize of every frame (antialiased when shrinking).
    video = jax.image.resize(
      video, (b, frames, height, width, c), method="bilinear"
    ).astype(video.dtype)
  return video


def noise_augment(
  video: jax.Array, rng: jax.Array, aug_logsnr: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Noise conditioning augmentation (paper Sec. 2.5).

  Args:
    video: [B, T, H, W, C] conditioning video in [-1, 1].
    rng: PRNG key for the Gaussian noise.
    aug_logsnr: [B] logSNR lambda' of the augmentation (+inf-like values such
      as 20 leave the video almost untouched).

  Returns:
    (z, noise): z = alpha' video + sigma' noise ([B, T, H, W, C], video's
    dtype), with alpha'^2 = sigmoid(lambda'), sigma'^2 = sigmoid(-lambda'),
    and the noise used.
  """
  aug_logsnr = jnp.asarray(aug_logsnr, jnp.float32)
  if aug_logsnr.shape != video.shape[:1]:
    raise ValueError(
      f"aug_logsnr must be [B]={video.shape[:1]}; got shape {aug_logsnr.shape}."
    )
  noise = jax.random.normal(rng, video.shape, jnp.float32)
  # z' = alpha(lambda') x + sigma(lambda') eps (paper Sec. 2.1, applied to the cond).
  z = schedules.diffuse(video.astype(jnp.float32), aug_logsnr, noise)
  return z.astype(video.dtype), noise.astype(video.dtype)
