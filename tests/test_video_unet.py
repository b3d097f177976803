"""VideoUNet: shapes, joint image-video equality, conditioning, numerics, errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_video_jax import config_utils
from imagen_video_jax.models import attention, layers, stage_model, t5, video_unet

B, T, H, W, L = 2, 4, 8, 8, 5


def _inputs(config, seed=0, frames=T):
  """Random inputs for config.model at [B, frames, H, W]; text width from config."""
  ks = jax.random.split(jax.random.key(seed), 5)
  m = config.model
  kw = dict(
    z=jax.random.normal(ks[0], (B, frames, H, W, 3)),
    logsnr=jnp.array([-3.0, 5.0]),
    text=jax.random.normal(ks[1], (B, L, stage_model.text_dim(config))),
    text_mask=jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool),
  )
  if m.cond_channels:
    kw["cond_video"] = jax.random.normal(ks[2], (B, frames, H, W, m.cond_channels))
    kw["aug_logsnr"] = jnp.array([0.0, 2.0])
  if m.num_extra_scalars:
    kw["extra_scalars"] = jnp.ones((B, m.num_extra_scalars))
  return kw


def _jit_apply(net):
  return jax.jit(
    lambda p, kw, rng=None, train=False: net.apply(
      {"params": p}, **kw, train=train, rngs={"dropout": rng} if train else {}
    ),
    static_argnames="train",
  )


def _random_params(boxed_shapes, seed=1):
  """Random values for a params tree of shapes (numpy: no XLA compile).

  Unlike a fresh init, the zero-initialised output layers are live, so every
  path of the network affects the output.
  """
  rng = np.random.default_rng(seed)

  def draw(path, x):
    name = jax.tree_util.keystr(path)
    n = rng.standard_normal(x.shape).astype(np.float32)
    if "scale" in name:
      return jnp.asarray(1.0 + 0.2 * n)
    if x.ndim == 1:
      return jnp.asarray(0.2 * n)
    return jnp.asarray(n / np.sqrt(np.prod(x.shape[:-1])))

  return jax.tree_util.tree_map_with_path(draw, nn.unbox(boxed_shapes))


class _Model:
  """A runlocal model with random params (shapes from eval_shape, no init compile)."""

  def __init__(self, spec, **overrides):
    self.config = config_utils.load_config(spec)
    self.config.model.update(overrides)
    self.net = video_unet.VideoUNet(**self.config.model)
    kw = _inputs(self.config)
    self.boxed = jax.eval_shape(lambda: self.net.init(jax.random.key(0), **kw))[
      "params"
    ]
    self.params = _random_params(self.boxed)
    self.apply = _jit_apply(self.net)


@pytest.fixture(scope="session")
def attn_model():
  return _Model("configs/base.py:runlocal")  # temporal attention, text only


@pytest.fixture(scope="session")
def conv_model():
  return _Model("configs/tsr1.py:runlocal")  # temporal conv, SR conditioning


def test_output_shape_and_dtype(attn_model, conv_model):
  for m in (attn_model, conv_model):
    out = m.apply(m.params, _inputs(m.config))
    assert out.shape == (B, T, H, W, 3) and out.dtype == jnp.float32
    assert np.all(np.isfinite(out)) and np.std(out) > 1e-3


def test_residual_branches_start_at_zero():
  # Zero-initialised last layers: a fresh ResBlock / temporal block is the identity.
  x = jax.random.normal(jax.random.key(0), (1, 3, 4, 4, 8))
  emb = jnp.ones((1, 16))
  is_image = jnp.zeros((1,), bool)
  for block, args in (
    (layers.ResBlock(8), (x, emb)),
    (layers.TemporalConv(), (x, is_image)),
    (attention.TemporalAttention(head_dim=4), (x, is_image)),
    (attention.SpatialAttention(head_dim=4), (x,)),
  ):
    out, _ = jax.jit(lambda a, b=block: b.init_with_output(jax.random.key(1), *a))(args)
    np.testing.assert_allclose(out, x, atol=1e-6)


@pytest.mark.parametrize("which", ["attn_model", "conv_model"])
def test_image_examples_equal_frame_by_frame(which, request):
  m = request.getfixturevalue(which)
  kw = _inputs(m.config, seed=3)
  video = m.apply(m.params, dict(kw, is_image=jnp.zeros((B,), bool)))
  images = m.apply(m.params, dict(kw, is_image=jnp.ones((B,), bool)))

  # Reference: every frame alone, as a batch of B*T one-frame images.
  def split(x):
    return x.reshape((B * T, 1) + x.shape[2:])

  ref_kw = {
    "z": split(kw["z"]),
    "logsnr": jnp.repeat(kw["logsnr"], T),
    "text": jnp.repeat(kw["text"], T, axis=0),
    "text_mask": jnp.repeat(kw["text_mask"], T, axis=0),
    "is_image": jnp.ones((B * T,), bool),
  }
  if "cond_video" in kw:
    ref_kw["cond_video"] = split(kw["cond_video"])
    ref_kw["aug_logsnr"] = jnp.repeat(kw["aug_logsnr"], T)
  ref = m.apply(m.params, ref_kw)
  np.testing.assert_allclose(split(images), ref, atol=2e-5, rtol=2e-5)
  # Temporal mixing is live for videos, so the equality above is not vacuous.
  assert np.max(np.abs(video - images)) > 1e-3


def test_cross_attention_matches_per_frame_numpy_reference():
  # Frames join the query sequence (one key/value projection per example); the
  # result must be each frame's own softmax attention to the caption.
  c, d, heads = 8, 6, 2
  ks = jax.random.split(jax.random.key(4), 3)
  x = jax.random.normal(ks[0], (B, T, H, W, c))
  text = jax.random.normal(ks[1], (B, L, d))
  mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
  block = attention.CrossAttention(head_dim=c // heads)
  shapes = jax.eval_shape(lambda: block.init(jax.random.key(0), x, text, mask))
  params = _random_params(shapes["params"])
  out = jax.jit(block.apply)({"params": params}, x, text, mask)

  p = jax.tree.map(np.asarray, params)
  xn = np.asarray(x, np.float64).reshape(B, T, H * W, c)
  mu = xn.mean(axis=2, keepdims=True)  # GroupNorm per frame: 8 groups of 1 channel
  y = (xn - mu) / np.sqrt(xn.var(axis=2, keepdims=True) + 1e-6)
  y = y * p["norm"]["scale"] + p["norm"]["bias"]
  tn = np.asarray(text, np.float64)
  tn = (tn - tn.mean(-1, keepdims=True)) / np.sqrt(tn.var(-1, keepdims=True) + 1e-6)
  tn = tn * p["text_norm"]["scale"] + p["text_norm"]["bias"]
  a = p["attention"]
  q = np.einsum("btsc,chk->btshk", y, a["query"]["kernel"])
  k = np.einsum("blc,chk->blhk", tn, a["key"]["kernel"])
  v = np.einsum("blc,chk->blhk", tn, a["value"]["kernel"])
  logits = np.einsum("btshk,blhk->bthsl", q, k) / np.sqrt(c // heads)
  logits = np.where(np.asarray(mask)[:, None, None, None, :], logits, -np.inf)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  o = np.einsum("bthsl,blhk->btshk", w, v)
  ref = xn + np.einsum("btshk,hkc->btsc", o, a["out"]["kernel"]) + a["out"]["bias"]
  np.testing.assert_allclose(out, ref.reshape(x.shape), atol=2e-4, rtol=2e-4)


def test_text_mask_hides_padding_and_text_matters(attn_model):
  m = attn_model
  kw = _inputs(m.config)
  out = m.apply(m.params, kw)
  padded = kw["text"].at[0, 3:].set(100.0)  # example 0 masks tokens 3, 4
  np.testing.assert_allclose(m.apply(m.params, dict(kw, text=padded)), out, atol=1e-5)
  changed = m.apply(m.params, dict(kw, text=kw["text"].at[0, 1].add(1.0)))
  assert np.max(np.abs(changed[0] - out[0])) > 1e-4
  np.testing.assert_allclose(changed[1], out[1], atol=1e-6)


def test_relative_position_bucket_closed_form():
  # T5 bidirectional bucketing, 32 buckets, max distance 128: 16 per direction,
  # exact below 8, log-spaced 8..15 up to 128, clipped beyond.
  d = jnp.array([0, -1, -7, -8, -16, -127, -1000, 1, 7, 8, 1000])
  expected = [0, 1, 7, 8, 10, 15, 15, 17, 23, 24, 31]
  np.testing.assert_array_equal(t5.relative_position_bucket(d), expected)


def test_extra_scalars_and_dropout():
  m = _Model("configs/ssr1.py:runlocal", num_extra_scalars=1, dropout=0.5)
  assert "extra_embed_0" in m.params
  kw = _inputs(m.config)
  a = m.apply(m.params, dict(kw, extra_scalars=jnp.zeros((B, 1))))
  b = m.apply(m.params, dict(kw, extra_scalars=jnp.full((B, 1), 3.0)))
  assert np.max(np.abs(a - b)) > 1e-4  # the guidance-weight slot conditions
  np.testing.assert_array_equal(
    a, m.apply(m.params, dict(kw, extra_scalars=jnp.zeros((B, 1))))
  )
  with pytest.raises(ValueError, match="extra_scalars"):
    m.apply(m.params, dict(kw, extra_scalars=jnp.zeros((B, 2))))
  # Dropout acts in train mode only, driven by the 'dropout' rng.
  d1 = m.apply(m.params, kw, jax.random.key(1), train=True)
  d2 = m.apply(m.params, kw, jax.random.key(2), train=True)
  assert np.max(np.abs(d1 - d2)) > 1e-4


def test_bf16_remat_matches_f32(attn_model):
  m = attn_model
  kw = _inputs(m.config)
  ref = m.apply(m.params, kw)
  net = video_unet.VideoUNet(**dict(m.config.model, dtype="bfloat16", remat=True))
  out = _jit_apply(net)(m.params, kw)
  assert out.dtype == jnp.float32
  rel = np.sqrt(np.mean((out - ref) ** 2) / np.mean(ref**2))
  assert rel < 0.05, rel


def test_every_param_has_logical_axes(attn_model, conv_model):
  for m in (attn_model, conv_model):
    specs = jax.tree.leaves(
      nn.get_partition_spec(m.boxed), is_leaf=lambda x: x is None or hasattr(x, "index")
    )
    shapes = jax.tree.leaves(m.params)
    assert len(specs) == len(shapes)
    for spec, p in zip(specs, shapes):
      assert spec is not None and len(spec) == p.ndim
    names = {n for s in specs for n in s if n}
    assert {"embed", "conv_in", "conv_out"} <= names


def test_cond_skip_predicts_the_residual_of_the_conditioning(conv_model):
  # v_hat = out - sigma_t cond: the same params give outputs that differ by
  # exactly sigma_t cond, and with a zero output layer x_hat = alpha z + sigma^2 c.
  m = conv_model
  skip = video_unet.VideoUNet(**dict(m.config.model, cond_skip=True))
  plain = video_unet.VideoUNet(**dict(m.config.model, cond_skip=False))
  kw = _inputs(m.config)
  out = skip.apply({"params": m.params}, **kw)
  plain = plain.apply({"params": m.params}, **kw)
  lam = np.asarray(kw["logsnr"], np.float64)[:, None, None, None, None]
  alpha, sigma = np.sqrt(1 / (1 + np.exp(-lam))), np.sqrt(1 / (1 + np.exp(lam)))
  cond = np.asarray(kw["cond_video"])
  np.testing.assert_allclose(out, plain - sigma * cond, atol=1e-5)
  zero = jax.tree_util.tree_map_with_path(
    lambda p, x: jnp.zeros_like(x) if "conv_out" in jax.tree_util.keystr(p) else x,
    m.params,
  )
  v_hat = np.asarray(skip.apply({"params": zero}, **kw), np.float64)
  x_hat = alpha * np.asarray(kw["z"]) - sigma * v_hat  # Sec. 2.4.
  np.testing.assert_allclose(x_hat, alpha * kw["z"] + sigma**2 * cond, atol=1e-5)
  with pytest.raises(ValueError, match="cond_skip needs cond_channels"):
    video_unet.VideoUNet(**dict(m.config.model, cond_channels=4, cond_skip=True)).apply(
      {"params": m.params}, **kw
    )


def test_bad_inputs_name_the_shapes(conv_model):
  m = conv_model
  kw = _inputs(m.config)
  call = lambda **o: m.net.apply({"params": m.params}, **dict(kw, **o))  # noqa: E731
  with pytest.raises(
    ValueError, match=r"cond_video.*\(2, 4, 4, 4, 3\).*\(2, 4, 8, 8, 3\)"
  ):
    call(cond_video=jnp.zeros((B, T, 4, 4, 3)))
  with pytest.raises(ValueError, match=r"\(2, 4, 5, 8, 3\).*divisible"):
    call(z=jnp.zeros((B, T, 5, 8, 3)), cond_video=jnp.zeros((B, T, 5, 8, 3)))
  with pytest.raises(ValueError, match=r"z_t.*\(2, 4, 8, 8, 4\)"):
    call(z=jnp.zeros((B, T, H, W, 4)))
  with pytest.raises(ValueError, match="aug_logsnr"):
    call(aug_logsnr=None)
