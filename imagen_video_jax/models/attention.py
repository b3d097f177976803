"""Attention blocks of the video U-Net: spatial, cross (text), temporal, pooling.

All attention goes through `jax.nn.dot_product_attention`, so backends with a
fused kernel (cuDNN flash attention, TPU splash via XLA) use it. Every block
is pre-norm and residual with a zero-initialised output projection.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from imagen_video_jax.models import layers, t5

Array = jax.Array
Dtype = jnp.dtype


class RelativePositionBias(nn.Module):
  """Learned T5-style bias over frame distances: (T,) -> [1, heads, T, T].

  Distances are bucketed (exact when small, log-spaced up to max_distance), so
  a model runs on more or fewer frames than it trained on.
  """

  num_heads: int
  num_buckets: int = 32
  max_distance: int = 128

  @nn.compact
  def __call__(self, length: int) -> Array:
    table = self.param(
      "rel_embedding",
      nn.with_logical_partitioning(
        nn.initializers.normal(0.02), ("relpos_buckets", "heads")
      ),
      (self.num_buckets, self.num_heads),
      jnp.float32,
    )
    pos = np.arange(length)
    # The T5 encoder's bucketing (shared code), over frame distances key - query.
    buckets = t5.relative_position_bucket(
      pos[None, :] - pos[:, None],
      num_buckets=self.num_buckets,
      max_distance=self.max_distance,
    )  # [T_query, T_key]
    return jnp.transpose(table[buckets], (2, 0, 1))[None]


def _heads(channels: int, head_dim: int) -> int:
  if channels % head_dim:
    raise ValueError(f"channels {channels} not divisible by head_dim {head_dim}")
  return channels // head_dim


class _Attention(nn.Module):
  """q from x [N, S, C], k/v from ctx [N, S', D] -> [N, S, C] (out proj zero-init)."""

  head_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, ctx: Array, bias=None, mask=None) -> Array:
    c = x.shape[-1]
    heads = (_heads(c, self.head_dim), self.head_dim)
    kw = dict(dtype=self.dtype, use_bias=False)
    q = layers.dense(heads, ("embed", "heads", "kv"), name="query", **kw)(x)
    k = layers.dense(heads, ("embed", "heads", "kv"), name="key", **kw)(ctx)
    v = layers.dense(heads, ("embed", "heads", "kv"), name="value", **kw)(ctx)
    # softmax(q k^T / sqrt(d) + bias) v  (Vaswani et al., 2017, eq. 1)
    out = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask)
    return layers.dense(
      c,
      ("heads", "kv", "embed"),
      axis=(-2, -1),
      dtype=self.dtype,
      name="out",
      zero_init=True,
    )(out)


class SpatialAttention(nn.Module):
  """Self-attention over the H*W positions of each frame: [B,T,H,W,C] -> same."""

  head_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b, t, h, w, c = x.shape
    y = layers.group_norm(x, dtype=self.dtype, name="norm").reshape(b * t, h * w, c)
    y = _Attention(self.head_dim, self.dtype, name="attention")(y, y)
    return layers.constrain(x + y.reshape(x.shape))


class CrossAttention(nn.Module):
  """Attention from each frame's positions to the text tokens.

  x [B, T, H, W, C], text [B, L, D], text_mask [B, L] bool -> [B, T, H, W, C].
  """

  head_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, text: Array, text_mask: Array) -> Array:
    b, t, h, w, c = x.shape
    # Frames join the query sequence: every position of every frame attends to the
    # same caption, so keys and values are projected once per example, not per frame.
    y = layers.group_norm(x, dtype=self.dtype, name="norm").reshape(b, t * h * w, c)
    ctx = nn.LayerNorm(
      dtype=self.dtype,
      param_dtype=jnp.float32,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
      name="text_norm",
    )(text)
    mask = text_mask[:, None, None, :]  # [B, 1, 1, L]
    y = _Attention(self.head_dim, self.dtype, name="attention")(y, ctx, mask=mask)
    return layers.constrain(x + y.reshape(x.shape))


class TemporalAttention(nn.Module):
  """Self-attention over frames at each spatial position, relative position bias.

  x [B, T, H, W, C], is_image [B] bool -> [B, T, H, W, C]. For image examples
  the attention mask is the identity: each frame attends only to itself.
  """

  head_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, is_image: Array) -> Array:
    b, t, h, w, c = x.shape
    y = layers.group_norm(x, dtype=self.dtype, name="norm")
    y = jnp.transpose(y, (0, 2, 3, 1, 4)).reshape(b * h * w, t, c)
    bias = RelativePositionBias(_heads(c, self.head_dim), name="relpos_bias")(t)
    eye = jnp.eye(t, dtype=bool)
    mask = jnp.where(is_image[:, None, None], eye, jnp.ones_like(eye))  # [B, T, T]
    mask = jnp.repeat(mask, h * w, axis=0)[:, None]  # [B*H*W, 1, T, T]
    y = _Attention(self.head_dim, self.dtype, name="attention")(
      y, y, bias=bias.astype(y.dtype), mask=mask
    )
    y = jnp.transpose(y.reshape(b, h, w, t, c), (0, 3, 1, 2, 4))
    return layers.constrain(x + y)


class AttentionPool(nn.Module):
  """Attention pooling of text tokens (query = masked mean token, as CLIP).

  text [B, L, D], text_mask [B, L] bool -> [B, features].
  """

  features: int
  head_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, text: Array, text_mask: Array) -> Array:
    m = text_mask[..., None].astype(text.dtype)
    mean = jnp.sum(text * m, axis=1, keepdims=True) / jnp.maximum(
      jnp.sum(m, axis=1, keepdims=True), 1.0
    )  # [B, 1, D]
    d = text.shape[-1]
    heads = (max(d // self.head_dim, 1), min(self.head_dim, d))
    kw = dict(dtype=self.dtype, use_bias=False)
    q = layers.dense(heads, ("embed", "heads", "kv"), name="query", **kw)(mean)
    k = layers.dense(heads, ("embed", "heads", "kv"), name="key", **kw)(text)
    v = layers.dense(heads, ("embed", "heads", "kv"), name="value", **kw)(text)
    out = jax.nn.dot_product_attention(q, k, v, mask=text_mask[:, None, None, :])
    out = layers.dense(
      self.features,
      ("heads", "kv", "embed"),
      axis=(-2, -1),
      dtype=self.dtype,
      name="out",
    )(out)
    return out[:, 0]
