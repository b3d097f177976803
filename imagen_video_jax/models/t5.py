"""The frozen T5 v1.1 text encoder of Imagen Video (paper Sec. 2), t5x-compatible.

Imagen Video conditions every stage on the embeddings of a frozen T5-XXL
encoder. This module is the encoder half of t5x's `examples/t5/network.py`
(T5.1.1) with t5x's parameter names, so a t5x or Hugging Face checkpoint maps
onto it one to one (see `t5_checkpoints.py`):

  token_embedder/embedding                         [vocab, embed]
  encoder/relpos_bias/rel_embedding                [heads, relpos_buckets]
  encoder/layers_N/pre_attention_layer_norm/scale  [embed]
  encoder/layers_N/attention/{query,key,value}/kernel  [embed, joined_kv]
  encoder/layers_N/attention/out/kernel            [joined_kv, embed]
  encoder/layers_N/pre_mlp_layer_norm/scale        [embed]
  encoder/layers_N/mlp/{wi_0,wi_1}/kernel          [embed, mlp]
  encoder/layers_N/mlp/wo/kernel                   [mlp, embed]
  encoder/encoder_norm/scale                       [embed]

Numerics follow t5x: RMS norms are computed in float32 (eps 1e-6) whatever the
compute dtype, because the mean of squares of bf16 activations loses too many
bits; attention logits are NOT scaled by 1/sqrt(head_dim) (T5 folds that factor
into the query initialiser, which is equivalent under Adafactor, so released
checkpoints expect unscaled logits); the MLP is gated GELU with the tanh
approximation (`gelu(x W_0) * (x W_1)`, flax's default `nn.gelu`, HF's
`gelu_new`); no biases anywhere; one relative position bias table is shared
by all layers. Dropout is absent: the encoder is frozen.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# T5 v1.1 sizes (t5x t5_1_1/*.gin). 'tiny' is ours, for tests and the demo.
_SIZES = {
  "tiny": dict(d_model=64, num_layers=2, num_heads=4, head_dim=16, d_ff=128),
  "small": dict(d_model=512, num_layers=8, num_heads=6, head_dim=64, d_ff=1024),
  "base": dict(d_model=768, num_layers=12, num_heads=12, head_dim=64, d_ff=2048),
  "large": dict(d_model=1024, num_layers=24, num_heads=16, head_dim=64, d_ff=2816),
  "xl": dict(d_model=2048, num_layers=24, num_heads=32, head_dim=64, d_ff=5120),
  "xxl": dict(d_model=4096, num_layers=24, num_heads=64, head_dim=64, d_ff=10240),
}


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Hyperparameters of a T5 v1.1 encoder."""

  vocab_size: int = 32128  # 32000 sentencepiece pieces + 100 extra ids, padded.
  d_model: int = 4096  # Embedding width ('embed').
  num_layers: int = 24
  num_heads: int = 64
  head_dim: int = 64  # num_heads * head_dim = 'joined_kv' width.
  d_ff: int = 10240  # Gated-GELU hidden width ('mlp').
  num_buckets: int = 32  # Relative position buckets.
  max_distance: int = 128  # Distances >= this share the last bucket.
  epsilon: float = 1e-6  # RMS norm epsilon.
  dtype: str = "float32"  # Compute dtype; parameters are always float32.


def t5_config(size: str, **overrides) -> T5Config:
  """The T5 v1.1 config of `size` in {tiny, small, base, large, xl, xxl}."""
  if size not in _SIZES:
    raise ValueError(f"Unknown T5 size {size!r}; expected one of {sorted(_SIZES)}.")
  return T5Config(**{**_SIZES[size], **overrides})


def relative_position_bucket(
  relative_position: np.ndarray,
  *,
  bidirectional: bool = True,
  num_buckets: int = 32,
  max_distance: int = 128,
) -> np.ndarray:
  """T5's bucket of each relative position (key - query), int32, same shape.

  Half the buckets hold exact distances 0 .. num_buckets/4 - 1 (per direction
  when bidirectional); the rest grow logarithmically up to `max_distance`,
  beyond which all distances share the last bucket (Raffel et al. 2020,
  Sec. 2.1; t5x `RelativePositionBiases._relative_position_bucket`).
  """
  n = -np.asarray(relative_position, np.int32)
  ret = np.zeros_like(n)
  if bidirectional:
    num_buckets //= 2
    ret += (n < 0).astype(np.int32) * num_buckets  # Keys after the query.
    n = np.abs(n)
  else:
    n = np.maximum(n, 0)
  max_exact = num_buckets // 2
  # bucket = max_exact + log(n / max_exact) / log(max_distance / max_exact)
  #          * (num_buckets - max_exact), for n >= max_exact.
  log_ratio = np.log(n.astype(np.float32) / max_exact + np.finfo(np.float32).eps)
  large = max_exact + (
    log_ratio / math.log(max_distance / max_exact) * (num_buckets - max_exact)
  ).astype(np.int32)
  large = np.minimum(large, num_buckets - 1)
  return ret + np.where(n < max_exact, n, large)


def _param_init(init, axes: tuple[str, ...]):
  return nn.with_logical_partitioning(init, axes)


class RMSNorm(nn.Module):
  """T5 layer norm: y = x / sqrt(mean(x^2) + eps) * scale, in float32."""

  epsilon: float = 1e-6
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = x.astype(jnp.float32)
    scale = self.param(
      "scale", _param_init(nn.initializers.ones, ("embed",)), (x.shape[-1],)
    )
    # RMSNorm (Zhang & Sennrich 2019): x * rsqrt(mean(x^2) + eps) * g.
    y = x * jax.lax.rsqrt(
      jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.epsilon
    )
    return (y * scale).astype(self.dtype)


def _dense(features: int, axes: tuple[str, str], init, dtype: str, name: str):
  return nn.Dense(
    features,
    use_bias=False,
    dtype=dtype,
    param_dtype=jnp.float32,
    kernel_init=_param_init(init, axes),
    name=name,
  )


_fan_in_normal = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
_fan_in_truncated = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


class SelfAttention(nn.Module):
  """T5 multi-head self-attention without logit scaling: [B, L, D] -> [B, L, D]."""

  config: T5Config

  @nn.compact
  def __call__(self, x: Array, bias: Array, mask: Array) -> Array:
    """x [B, L, D]; bias [1, H, L, L] relative positions; mask [B, L] bool."""
    cfg = self.config
    b, length, d = x.shape
    h, dh = cfg.num_heads, cfg.head_dim

    def query_init(key, shape, dtype=jnp.float32):
      # t5x folds 1/sqrt(head_dim) into the query init instead of the logits.
      return _fan_in_normal(key, shape, dtype) / math.sqrt(dh)

    q, k, v = (
      _dense(h * dh, ("embed", "joined_kv"), init, cfg.dtype, name)(x).reshape(
        b, length, h, dh
      )
      for name, init in (
        ("query", query_init),
        ("key", _fan_in_normal),
        ("value", _fan_in_normal),
      )
    )
    # softmax(q k^T + bias) v, no 1/sqrt(d) factor (T5); padded keys masked out.
    out = jax.nn.dot_product_attention(
      q, k, v, bias=bias.astype(q.dtype), mask=mask[:, None, None, :], scale=1.0
    )
    out = out.reshape(b, length, h * dh)
    return _dense(d, ("joined_kv", "embed"), _fan_in_normal, cfg.dtype, "out")(out)


class EncoderLayer(nn.Module):
  """Pre-norm self-attention + gated-GELU MLP block: [B, L, D] -> [B, L, D]."""

  config: T5Config

  @nn.compact
  def __call__(self, x: Array, bias: Array, mask: Array) -> Array:
    """x [B, L, D]; bias [1, H, L, L] relative positions; mask [B, L] bool."""
    cfg = self.config
    y = RMSNorm(cfg.epsilon, cfg.dtype, name="pre_attention_layer_norm")(x)
    x = x + SelfAttention(cfg, name="attention")(y, bias, mask).astype(x.dtype)
    y = RMSNorm(cfg.epsilon, cfg.dtype, name="pre_mlp_layer_norm")(x)
    return x + MlpBlock(cfg, name="mlp")(y).astype(x.dtype)


class MlpBlock(nn.Module):
  """Gated GELU MLP (Shazeer 2020): wo(gelu(x wi_0) * (x wi_1)), [B, L, D]."""

  config: T5Config

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    wi = ("embed", "mlp")
    gate = _dense(cfg.d_ff, wi, _fan_in_truncated, cfg.dtype, "wi_0")(x)
    lin = _dense(cfg.d_ff, wi, _fan_in_truncated, cfg.dtype, "wi_1")(x)
    hidden = nn.gelu(gate, approximate=True) * lin  # GEGLU, tanh-approximate GELU.
    hidden = nn.with_logical_constraint(hidden, ("batch", "length", "mlp"))
    return _dense(x.shape[-1], ("mlp", "embed"), _fan_in_truncated, cfg.dtype, "wo")(
      hidden
    )


class RelativePositionBias(nn.Module):
  """T5 relative position bias `rel_embedding` [H, buckets] -> [1, H, L, L]."""

  config: T5Config

  @nn.compact
  def __call__(self, length: int) -> Array:
    cfg = self.config
    rel_embedding = self.param(
      "rel_embedding",
      _param_init(
        nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
        ("heads", "relpos_buckets"),
      ),
      (cfg.num_heads, cfg.num_buckets),
    )
    positions = np.arange(length)
    buckets = relative_position_bucket(
      positions[None, :] - positions[:, None],  # key - query, [L, L].
      bidirectional=True,
      num_buckets=cfg.num_buckets,
      max_distance=cfg.max_distance,
    )
    return rel_embedding[:, buckets][None]


class Encoder(nn.Module):
  """The stack: shared `relpos_bias`, `layers_N`, final `encoder_norm`."""

  config: T5Config

  @nn.compact
  def __call__(self, x: Array, mask: Array) -> Array:
    """x [B, L, D] embedded tokens, mask [B, L] bool -> [B, L, D]."""
    cfg = self.config
    bias = RelativePositionBias(cfg, name="relpos_bias")(x.shape[1])
    for i in range(cfg.num_layers):
      x = EncoderLayer(cfg, name=f"layers_{i}")(x, bias, mask)
      x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    return RMSNorm(cfg.epsilon, cfg.dtype, name="encoder_norm")(x)


class T5Encoder(nn.Module):
  """Frozen T5 v1.1 encoder: tokens [B, L] int32, mask [B, L] -> [B, L, D] f32.

  Padded positions are computed like in t5x and HF (their keys are masked out
  of every attention) but their outputs are not zeroed: consumers use `mask`.
  """

  config: T5Config

  @nn.compact
  def __call__(self, tokens: Array, mask: Array) -> Array:
    cfg = self.config
    if tokens.ndim != 2 or mask.shape != tokens.shape:
      raise ValueError(
        f"T5Encoder expects tokens [B, L] and mask [B, L]; got {tokens.shape}, "
        f"{mask.shape}."
      )
    x = nn.Embed(
      cfg.vocab_size,
      cfg.d_model,
      dtype=cfg.dtype,
      param_dtype=jnp.float32,
      embedding_init=_param_init(
        nn.initializers.normal(stddev=1.0), ("vocab", "embed")
      ),
      name="token_embedder",
    )(tokens.astype(jnp.int32))
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    x = Encoder(cfg, name="encoder")(x, mask.astype(bool))
    return x.astype(jnp.float32)
