"""The space-time separable video U-Net of Imagen Video (Ho et al., 2022, Fig. 7).

Spatial ops (3x3 conv ResBlocks, spatial self-attention, text cross-attention)
run per frame with shared weights; temporal ops (attention over frames with a
relative position bias, or a kernel-3 conv along time) mix frames. Resolution
changes are spatial only, so the frame count is free and a model trained on T
frames runs on more or fewer.

A stage is data: `VideoUNet(**config.model)` (stage_model.make_model adds the
run's compute dtype and remat).
"""

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from imagen_video_jax.diffusion import schedules
from imagen_video_jax.models import attention, layers

Array = jax.Array
TEMPORAL_MIXING = ("attention", "conv", "none")


class UNetBlock(nn.Module):
  """One U-Net block: ResBlock, then the level's attention and temporal mixing.

  x [B, T, H, W, C_in] -> [B, T, H, W, features].
  """

  features: int
  spatial_attention: bool
  cross_attention: bool
  temporal_mixing: str
  head_dim: int
  dropout: float = 0.0
  deterministic: bool = True
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, emb, text, text_mask, is_image):
    kw = dict(dtype=self.dtype)
    x = layers.ResBlock(
      self.features, self.dropout, self.deterministic, name="res", **kw
    )(x, emb)
    if self.spatial_attention:
      x = attention.SpatialAttention(self.head_dim, name="spatial_attention", **kw)(x)
    if self.cross_attention:
      x = attention.CrossAttention(self.head_dim, name="cross_attention", **kw)(
        x, text, text_mask
      )
    if self.temporal_mixing == "attention":
      x = attention.TemporalAttention(self.head_dim, name="temporal_attention", **kw)(
        x, is_image
      )
    elif self.temporal_mixing == "conv":
      x = layers.TemporalConv(name="temporal_conv", **kw)(x, is_image)
    return x


class VideoUNet(nn.Module):
  """Video U-Net; fields are the keys of `config.model` (configs/common.py),
  and the run's compute settings `dtype` and `remat` (stage_model.make_model).

  Per-level lists run from the highest resolution (level 0) to the lowest.
  Parameters are named `down_{level}_{i}`, `up_{level}_{i}`, `mid_{i}`, so
  `models/summary.py` can count them per level.
  """

  base_channels: int
  channel_mult: Sequence[int]
  num_res_blocks: Sequence[int]
  spatial_attention: Sequence[bool]
  cross_attention: Sequence[bool]
  temporal_mixing: Sequence[str]
  head_dim: int = 64
  dropout: float = 0.0
  out_channels: int = 3
  cond_channels: int = 0
  use_aug_embedding: bool = False
  embed_dim: int = 256
  dtype: str = "float32"  # Compute dtype (config.dtype).
  remat: bool = False  # nn.remat around every block (config.remat != 'none').
  num_extra_scalars: int = 0
  cond_skip: bool = False

  def _check_config(self) -> None:
    n = len(self.channel_mult)
    for key in (
      "num_res_blocks",
      "spatial_attention",
      "cross_attention",
      "temporal_mixing",
    ):
      if len(getattr(self, key)) != n:
        raise ValueError(
          f"model.{key} has {len(getattr(self, key))} levels, channel_mult has {n}"
        )
    for mixing in self.temporal_mixing:
      if mixing not in TEMPORAL_MIXING:
        raise ValueError(f"model.temporal_mixing {mixing!r} not in {TEMPORAL_MIXING}")
    if self.cond_skip and self.cond_channels != self.out_channels:
      raise ValueError(
        f"model.cond_skip needs cond_channels == out_channels; got "
        f"{self.cond_channels} and {self.out_channels}"
      )

  def _check_inputs(
    self, z, logsnr, text, text_mask, cond_video, aug_logsnr, extra_scalars
  ):
    if z.ndim != 5 or z.shape[-1] != self.out_channels:
      raise ValueError(
        f"z_t has shape {z.shape}; expected [B, T, H, W, {self.out_channels}]"
      )
    b, _, h, w, _ = z.shape
    factor = 2 ** (len(self.channel_mult) - 1)
    if h % factor or w % factor:
      raise ValueError(
        f"z_t has shape {z.shape}: height {h} and width {w} must be "
        f"divisible by 2**(levels-1) = {factor}"
      )
    if logsnr.shape != (b,):
      raise ValueError(
        f"logsnr has shape {logsnr.shape}; expected ({b},) for z_t {z.shape}"
      )
    if text.ndim != 3 or text.shape[0] != b or text_mask.shape != text.shape[:2]:
      raise ValueError(
        f"text {text.shape} / text_mask {text_mask.shape} must be "
        f"[{b}, L, D] / [{b}, L] for z_t {z.shape}"
      )
    if self.cond_channels:
      expected = z.shape[:-1] + (self.cond_channels,)
      if cond_video is None or cond_video.shape != expected:
        got = None if cond_video is None else cond_video.shape
        raise ValueError(
          f"cond_video has shape {got}; expected {expected} "
          f"(z_t {z.shape} with {self.cond_channels} channels)"
        )
    elif cond_video is not None:
      raise ValueError(
        f"cond_video {cond_video.shape} given but model.cond_channels is 0"
      )
    if self.use_aug_embedding and (aug_logsnr is None or aug_logsnr.shape != (b,)):
      got = None if aug_logsnr is None else aug_logsnr.shape
      raise ValueError(f"aug_logsnr has shape {got}; expected ({b},)")
    if self.num_extra_scalars and (
      extra_scalars is None or extra_scalars.shape != (b, self.num_extra_scalars)
    ):
      got = None if extra_scalars is None else extra_scalars.shape
      raise ValueError(
        f"extra_scalars has shape {got}; expected ({b}, {self.num_extra_scalars})"
      )

  def _conditioning(self, logsnr, text, text_mask, aug_logsnr, extra_scalars):
    """Sum of the scalar embeddings and the pooled text: -> [B, embed_dim]."""
    dtype = jnp.dtype(self.dtype)
    scalars = {"logsnr_embed": logsnr}
    if self.use_aug_embedding:
      scalars["aug_logsnr_embed"] = aug_logsnr  # lambda' of noise augmentation
    for i in range(self.num_extra_scalars):
      scalars[f"extra_embed_{i}"] = extra_scalars[:, i]  # e.g. guidance weight w
    # Extra inputs start at zero output: a student built from a teacher is the
    # teacher until its new embedding learns (Meng et al., 2022).
    emb = sum(
      layers.ScalarEmbedding(
        self.embed_dim, dtype, zero_init=name.startswith("extra"), name=name
      )(value)
      for name, value in scalars.items()
    )
    emb = emb + attention.AttentionPool(
      self.embed_dim, self.head_dim, dtype, name="text_pool"
    )(text, text_mask)
    return nn.with_logical_constraint(emb, ("batch", "embed"))

  @nn.compact
  def __call__(
    self,
    z: Array,
    logsnr: Array,
    text: Array,
    text_mask: Array,
    *,
    cond_video: Array | None = None,
    aug_logsnr: Array | None = None,
    is_image: Array | None = None,
    extra_scalars: Array | None = None,
    train: bool = False,
  ) -> Array:
    """Predicts the parameterization's target (v, eps or x) from z_t.

    Args:
      z: z_t [B, T, H, W, out_channels].
      logsnr: lambda_t [B].
      text: text embeddings [B, L, D] (D is the text encoder's width).
      text_mask: [B, L] bool, True on real tokens.
      cond_video: SR conditioning video [B, T, H, W, cond_channels], already
        resized to z's frames and resolution.
      aug_logsnr: noise-augmentation lambda' [B] (SR stages).
      is_image: [B] bool; image examples get no temporal mixing.
      extra_scalars: [B, num_extra_scalars] (distillation's guidance weight).
      train: enables dropout (rng collection 'dropout').

    Returns:
      [B, T, H, W, out_channels] float32.
    """
    self._check_config()
    self._check_inputs(
      z, logsnr, text, text_mask, cond_video, aug_logsnr, extra_scalars
    )
    dtype = jnp.dtype(self.dtype)
    b = z.shape[0]
    is_image = jnp.zeros((b,), bool) if is_image is None else is_image.astype(bool)
    text_mask = text_mask.astype(bool)
    text = text.astype(dtype)
    emb = self._conditioning(logsnr, text, text_mask, aug_logsnr, extra_scalars)

    block_cls = nn.remat(UNetBlock) if self.remat else UNetBlock

    def block(level, features, name):
      return block_cls(
        features=features,
        spatial_attention=self.spatial_attention[level],
        cross_attention=self.cross_attention[level],
        temporal_mixing=self.temporal_mixing[level],
        head_dim=self.head_dim,
        dropout=self.dropout,
        deterministic=not train,
        dtype=dtype,
        name=name,
      )

    x = z if cond_video is None else jnp.concatenate([z, cond_video], axis=-1)
    x = layers.constrain(x.astype(dtype))
    channels = [self.base_channels * m for m in self.channel_mult]
    h = layers.per_frame(
      layers.conv(channels[0], (3, 3), dtype=dtype, name="conv_in"), x
    )
    args = (emb, text, text_mask, is_image)

    # Down path: keep every block's output for the skip connections.
    skips = [h]
    last = len(channels) - 1
    for level, ch in enumerate(channels):
      for i in range(self.num_res_blocks[level]):
        h = block(level, ch, f"down_{level}_{i}")(h, *args)
        skips.append(h)
      if level < last:
        h = layers.Downsample(
          channels[level + 1], dtype, name=f"down_{level}_downsample"
        )(h)
        skips.append(h)

    h = block(last, channels[last], "mid_0")(h, *args)
    h = block(last, channels[last], "mid_1")(h, *args)

    # Up path: skips scaled by 1/sqrt(2) (Efficient U-Net, Saharia et al., 2022).
    for level in reversed(range(len(channels))):
      for i in range(self.num_res_blocks[level] + 1):
        h = jnp.concatenate([h, skips.pop() * (1 / math.sqrt(2))], axis=-1)
        h = block(level, channels[level], f"up_{level}_{i}")(h, *args)
      if level > 0:
        h = layers.Upsample(channels[level - 1], dtype, name=f"up_{level}_upsample")(h)

    h = nn.swish(layers.group_norm(h, dtype=dtype, name="norm_out"))
    out = layers.per_frame(
      layers.conv(
        self.out_channels, (3, 3), dtype=dtype, name="conv_out", zero_init=True
      ),
      h,
    )
    out = out.astype(jnp.float32)
    if self.cond_skip:
      # v-prediction of the residual x - c: v_hat = out - sigma_t c, so a zero
      # output predicts x_hat = alpha_t z + sigma_t^2 c (x_hat = alpha z - sigma v,
      # paper Sec. 2.4), the conditioning itself at low SNR. An SR stage then
      # learns what its input lacks instead of how to copy it.
      _, sigma = schedules.alpha_sigma(logsnr)
      out = out - schedules.expand_to(sigma, out) * cond_video.astype(jnp.float32)
    return layers.constrain(out)
