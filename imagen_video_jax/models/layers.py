"""Convolutional building blocks of the space-time separable video U-Net.

Every parameter carries logical axis names (t5x style) so that
`sharding.py` can map them onto a mesh from config rules:

  conv kernels        (None, ..., 'conv_in', 'conv_out'), biases ('conv_out',)
  dense kernels       ('embed', 'mlp') / ('mlp', 'embed'), biases ('mlp',)/('embed',)
  norm scales/biases  ('embed',)
  attention q/k/v     ('embed', 'heads', 'kv'), output ('heads', 'kv', 'embed')
  relative bias       ('relpos_buckets', 'heads')

Activations are [B, T, H, W, C] with logical names
('batch', 'frames', 'height', 'width', 'embed'). Spatial ops fold the frame
axis into the batch (paper Fig. 7: per-frame ops with shared weights); temporal
ops mix frames.
"""

import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Dtype = jnp.dtype

VIDEO_AXES = ("batch", "frames", "height", "width", "embed")
_zeros = nn.initializers.zeros
_ones = nn.initializers.ones
_default_kernel = nn.initializers.lecun_normal()


def constrain(x: Array, axes: Sequence[str | None] = VIDEO_AXES) -> Array:
  """Names the axes of a main activation for the sharding rules."""
  return nn.with_logical_constraint(x, tuple(axes))


class _Kernel(nn.LogicallyPartitioned):
  """A logically named kernel that DenseGeneral may first create flattened.

  DenseGeneral draws a kernel of several input or output axes as a matrix and
  unboxes it to reshape it; under the logical-axis rules that unboxing would
  constrain the matrix with the names of the full shape, a rank mismatch.
  """

  def unbox(self, apply_constraint: bool = True) -> Array:
    if jnp.ndim(self.value) != len(self.names):  # The flat draw, not yet named.
      return self.value
    return super().unbox(apply_constraint)


def _named(init: Callable[..., Array], axes: tuple[str | None, ...]):
  """`init` whose output is boxed with the logical axis names `axes`."""
  return lambda *args: _Kernel(init(*args), names=tuple(axes))


def dense(
  features: int | Sequence[int],
  axes: tuple[str | None, ...],
  *,
  dtype: Dtype,
  name: str,
  zero_init: bool = False,
  use_bias: bool = True,
  axis: int | Sequence[int] = -1,
) -> nn.DenseGeneral:
  """A DenseGeneral whose kernel has logical axes `axes` (input..., output...)."""
  n_out = 1 if isinstance(features, int) else len(features)
  return nn.DenseGeneral(
    features,
    axis=axis,
    use_bias=use_bias,
    dtype=dtype,
    param_dtype=jnp.float32,
    kernel_init=_named(_zeros if zero_init else _default_kernel, axes),
    bias_init=nn.with_logical_partitioning(_zeros, axes[-n_out:]),
    name=name,
  )


def conv(
  features: int,
  kernel_size: tuple[int, ...],
  *,
  dtype: Dtype,
  name: str,
  strides: tuple[int, ...] | None = None,
  zero_init: bool = False,
) -> nn.Conv:
  """A 'SAME'-padded conv with kernel axes (None, ..., 'conv_in', 'conv_out')."""
  axes = (None,) * len(kernel_size) + ("conv_in", "conv_out")
  return nn.Conv(
    features,
    kernel_size,
    strides=strides,
    padding="SAME",
    dtype=dtype,
    param_dtype=jnp.float32,
    kernel_init=nn.with_logical_partitioning(
      _zeros if zero_init else _default_kernel, axes
    ),
    bias_init=nn.with_logical_partitioning(_zeros, ("conv_out",)),
    name=name,
  )


def group_norm(x: Array, *, dtype: Dtype, name: str, groups: int = 32) -> Array:
  """GroupNorm over each frame separately: x [B, T, H, W, C] -> same shape.

  Statistics are per (example, frame), never across frames, so a frame's
  result does not depend on its neighbours (needed for joint image training).
  """
  b, t = x.shape[:2]
  c = x.shape[-1]
  norm = nn.GroupNorm(
    num_groups=math.gcd(groups, c),
    dtype=dtype,
    param_dtype=jnp.float32,
    scale_init=nn.with_logical_partitioning(_ones, ("embed",)),
    bias_init=nn.with_logical_partitioning(_zeros, ("embed",)),
    name=name,
  )
  return norm(x.reshape((b * t,) + x.shape[2:])).reshape(x.shape)


def per_frame(fn, x: Array) -> Array:
  """Applies a 2-D op to every frame: x [B, T, H, W, C] -> [B, T, H', W', C']."""
  b, t = x.shape[:2]
  y = fn(x.reshape((b * t,) + x.shape[2:]))
  return y.reshape((b, t) + y.shape[1:])


def sinusoidal_embedding(x: Array, dim: int, max_period: float = 10_000.0) -> Array:
  """Transformer sinusoidal features of a scalar: x [B] -> [B, dim] f32.

  emb = [cos(x w_k), sin(x w_k)], w_k = max_period^(-k / (dim/2)) (Vaswani et
  al., 2017; DDPM's timestep embedding, applied here to logSNR lambda).
  """
  if dim % 2:
    raise ValueError(f"sinusoidal embedding dim must be even, got {dim}")
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = x.astype(jnp.float32)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class ScalarEmbedding(nn.Module):
  """Sinusoidal features of one scalar per example -> MLP: [B] -> [B, embed_dim].

  With `zero_init` the last layer starts at zero, so the embedding adds nothing
  until trained: a distillation student given a new input (the guidance weight
  w) then starts as exactly the network it was copied from.
  """

  embed_dim: int
  dtype: Dtype = jnp.float32
  zero_init: bool = False

  @nn.compact
  def __call__(self, x: Array) -> Array:
    h = sinusoidal_embedding(x, self.embed_dim).astype(self.dtype)
    h = dense(self.embed_dim, ("embed", "mlp"), dtype=self.dtype, name="dense_0")(h)
    h = nn.swish(h)
    return dense(
      self.embed_dim,
      ("mlp", "embed"),
      dtype=self.dtype,
      name="dense_1",
      zero_init=self.zero_init,
    )(h)


class ResBlock(nn.Module):
  """Per-frame 3x3 conv ResBlock with FiLM conditioning.

  x [B, T, H, W, C_in], emb [B, E] -> [B, T, H, W, features].
  h = conv(swish(GN(x))); h = GN(h) * (1 + scale) + shift (FiLM from emb);
  h = conv_zero(dropout(swish(h))); out = skip(x) + h. The last conv is
  zero-initialised, so the block starts as (a projection of) the identity.
  """

  features: int
  dropout: float = 0.0
  deterministic: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, emb: Array) -> Array:
    h = nn.swish(group_norm(x, dtype=self.dtype, name="norm_0"))
    h = per_frame(conv(self.features, (3, 3), dtype=self.dtype, name="conv_0"), h)
    film = dense(
      2 * self.features, ("embed", "conv_out"), dtype=self.dtype, name="film"
    )(nn.swish(emb))
    scale, shift = jnp.split(film[:, None, None, None, :], 2, axis=-1)
    h = group_norm(h, dtype=self.dtype, name="norm_1") * (1 + scale) + shift  # FiLM
    h = nn.Dropout(self.dropout, deterministic=self.deterministic)(nn.swish(h))
    h = per_frame(
      conv(self.features, (3, 3), dtype=self.dtype, name="conv_1", zero_init=True), h
    )
    if x.shape[-1] != self.features:
      x = per_frame(conv(self.features, (1, 1), dtype=self.dtype, name="skip"), x)
    return constrain(x + h)


class TemporalConv(nn.Module):
  """Kernel-3 convolution along time in a zero-initialised residual branch.

  x [B, T, H, W, C], is_image [B] bool -> [B, T, H, W, C]. The branch is
  skipped (zeroed) for image examples, whose frames are independent.
  """

  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, is_image: Array) -> Array:
    h = nn.swish(group_norm(x, dtype=self.dtype, name="norm"))
    h = _TimeConv(dtype=self.dtype, name="conv")(h)
    keep = jnp.logical_not(is_image)[:, None, None, None, None]
    return constrain(x + jnp.where(keep, h, jnp.zeros_like(h)))


class _TimeConv(nn.Module):
  """A zero-initialised 'SAME' conv with kernel (3, 1, 1) over [B, T, H, W, C].

  Same parameters and result as nn.Conv(C, (3, 1, 1)), computed as three
  time-shifted matmuls: XLA's CPU backend has no fast path for 3-D
  convolutions (16x slower in the tsr1 demo), while matmuls are fast everywhere.
  """

  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    kernel = self.param(
      "kernel",
      nn.with_logical_partitioning(_zeros, (None, None, None, "conv_in", "conv_out")),
      (3, 1, 1, c, c),
      jnp.float32,
    ).astype(self.dtype)
    bias = self.param(
      "bias", nn.with_logical_partitioning(_zeros, ("conv_out",)), (c,), jnp.float32
    ).astype(self.dtype)
    t = x.shape[1]
    x = jnp.pad(x.astype(self.dtype), ((0, 0), (1, 1), (0, 0), (0, 0), (0, 0)))
    # out[t] = sum_k x[t + k - 1] @ W[k] (cross-correlation, as nn.Conv).
    out = sum(x[:, k : k + t] @ kernel[k, 0, 0] for k in range(3))
    return out + bias


class Downsample(nn.Module):
  """Stride-2 3x3 conv per frame: [B, T, H, W, C] -> [B, T, H/2, W/2, features]."""

  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    op = conv(self.features, (3, 3), strides=(2, 2), dtype=self.dtype, name="conv")
    return constrain(per_frame(op, x))


class Upsample(nn.Module):
  """Nearest x2 then 3x3 conv per frame: [B, T, H, W, C] -> [B, T, 2H, 2W, features]."""

  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
    op = conv(self.features, (3, 3), dtype=self.dtype, name="conv")
    return constrain(per_frame(op, x))
