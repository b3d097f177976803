"""Tests of imagen_video_jax.metrics: Fréchet distance, FID, FVD, CLIP, alignment."""

import json
import os

import jax
import numpy as np
import pytest
import scipy.linalg

from imagen_video_jax import bouncing_digits as bd
from imagen_video_jax import evaluate
from imagen_video_jax.metrics import alignment, clip_score, fid, frechet

# ----------------------------------------------------------------------------
# Fréchet distance.
# ----------------------------------------------------------------------------


def _scipy_frechet(mu1, s1, mu2, s2):
  """Independent reference: the textbook formula with scipy's sqrtm."""
  covmean = np.real(scipy.linalg.sqrtm(s1 @ s2))
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean))


def test_frechet_distance_diagonal_closed_form():
  # For diagonal covariances d^2 = |mu1 - mu2|^2 + sum (sigma1 - sigma2)^2.
  mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.0])
  sd1, sd2 = np.array([1.0, 2.0, 0.5]), np.array([3.0, 2.0, 1.5])
  want = np.sum((mu1 - mu2) ** 2) + np.sum((sd1 - sd2) ** 2)
  got = frechet.frechet_distance(mu1, np.diag(sd1**2), mu2, np.diag(sd2**2))
  np.testing.assert_allclose(got, want, rtol=1e-10)


def test_frechet_distance_matches_scipy_sqrtm():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
  s1, s2 = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)
  mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
  np.testing.assert_allclose(
    frechet.frechet_distance(mu1, s1, mu2, s2),
    _scipy_frechet(mu1, s1, mu2, s2),
    rtol=1e-8,
  )
  # Singular covariances (fewer samples than dimensions) stay finite and agree.
  x, y = rng.normal(size=(4, 10)), rng.normal(size=(5, 10)) + 1.0
  got = frechet.feature_distance(x, y)
  want = _scipy_frechet(*frechet.gaussian_stats(x), *frechet.gaussian_stats(y))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert abs(frechet.feature_distance(x, x)) < 1e-8


def test_frechet_distance_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match="Mismatched"):
    frechet.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
  with pytest.raises(ValueError, match="features"):
    frechet.gaussian_stats(np.zeros((1, 3)))


# ----------------------------------------------------------------------------
# Frame FID with random InceptionV3 weights.
# ----------------------------------------------------------------------------


@pytest.mark.slow  # 15 s on an idle 2-core CPU, minutes when it is shared.
def test_frame_fid_with_random_inception(tmp_path):
  path = str(tmp_path / "inception.msgpack")
  fid.save_variables(path, fid.random_variables(seed=0))
  variables = fid.load_inception(path)
  rng = np.random.default_rng(0)
  videos = rng.integers(0, 256, (2, 1, 16, 16, 3), dtype=np.uint8)  # 2 frames.
  shifted = np.clip(videos.astype(int) + 80, 0, 255).astype(np.uint8)
  feats = fid.inception_features(variables, videos[:, 0], batch_size=2)
  assert feats.shape == (2, fid.FEATURE_DIM) and np.isfinite(feats).all()
  other = fid.frame_fid(variables, videos, shifted, batch_size=2)
  assert abs(frechet.feature_distance(feats, feats)) < 1e-9 * other and other > 0
  feats_shifted = fid.inception_features(variables, shifted[:, 0], batch_size=2)
  np.testing.assert_allclose(
    other, frechet.feature_distance(feats, feats_shifted), rtol=1e-6
  )


def test_load_inception_rejects_bad_files(tmp_path):
  with pytest.raises(ValueError, match="missing.msgpack"):
    fid.load_inception(str(tmp_path / "missing.msgpack"))
  path = str(tmp_path / "small.msgpack")
  fid.save_variables(path, {"params": {"w": np.zeros(3)}})
  with pytest.raises(ValueError, match="does not hold InceptionV3"):
    fid.load_inception(path)


def test_from_torch_state_dict_names_and_layouts():
  shapes = fid.random_variables(seed=1)
  conv = shapes["params"]["Mixed_7c"]["branch3x3_2a"]["conv"]["kernel"]  # [1,3,I,O]
  state = {
    "Mixed_7c.branch3x3_2a.conv.weight": conv.transpose(3, 2, 0, 1),
    "Mixed_7c.branch3x3_2a.bn.running_var": np.full(conv.shape[-1], 2.0),
    "fc.weight": np.zeros((1000, 2048)),
  }
  got = fid.from_torch_state_dict(state)
  np.testing.assert_array_equal(
    got["params"]["Mixed_7c"]["branch3x3_2a"]["conv"]["kernel"], conv
  )
  assert got["batch_stats"]["Mixed_7c"]["branch3x3_2a"]["bn"]["var"][0] == 2.0
  assert "fc" not in got["params"]


# ----------------------------------------------------------------------------
# CLIP score and R-precision.
# ----------------------------------------------------------------------------


def test_clip_score_is_clipped_scaled_cosine():
  frames = np.array([[[1.0, 0.0], [0.0, 1.0]], [[-1.0, 0.0], [-1.0, 0.0]]])  # [2,2,2]
  text = np.array([[np.sqrt(0.5), np.sqrt(0.5)], [1.0, 0.0]])
  # Video 0: cos 0.707 on both frames; video 1: cos -1 -> clipped to 0.
  np.testing.assert_allclose(
    clip_score.clip_score(frames, text), 100 * np.sqrt(0.5) / 2
  )


def test_r_precision_constructed_case():
  eye = np.eye(6)
  prompts = [f"prompt {i}" for i in range(6)]
  # Videos 0-3 match only their own prompt; video 4 is closer to prompt 5 (0.8)
  # than to its own (0.6), video 5 closer to prompt 0.
  videos = eye[[0, 1, 2, 3, 4, 5]].copy()
  videos[4], videos[5] = 0.6 * eye[4] + 0.8 * eye[5], 0.6 * eye[5] + 0.8 * eye[0]
  frames = videos[:, None, :].repeat(2, axis=1)
  got = clip_score.r_precision(frames, eye, prompts, num_distractors=99)
  assert got == pytest.approx(4 / 6)
  # With one distractor, videos 4 and 5 fail only when it is their rival
  # (probability 1/5 each): expected 4/6 + 2/6 * 4/5 = 0.93.
  draws = [clip_score.r_precision(frames, eye, prompts, 1, seed=s) for s in range(40)]
  assert 0.85 < np.mean(draws) < 0.99
  # Duplicate prompt texts are never each other's distractors.
  dup = ["a", "a", "b"]
  frames = eye[[0, 0, 2], :3][:, None, :]
  assert clip_score.r_precision(frames, eye[[0, 0, 2], :3], dup) == 1.0
  with pytest.raises(ValueError, match="distinct prompts"):
    clip_score.r_precision(frames[:2], eye[:2, :3], ["a", "a"])


def write_tiny_clip(path: str) -> None:
  """A random tiny CLIP directory: byte-level vocab, no merges, 32x32 images."""
  from transformers import CLIPConfig, CLIPImageProcessor, CLIPTokenizer, FlaxCLIPModel
  from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

  os.makedirs(path, exist_ok=True)
  chars = list(bytes_to_unicode().values())
  words = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
  with open(os.path.join(path, "vocab.json"), "w") as f:
    json.dump({w: i for i, w in enumerate(words)}, f)  # EOS has the largest id.
  with open(os.path.join(path, "merges.txt"), "w") as f:
    f.write("#version: 0.2\n")
  tower = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
  }
  config = CLIPConfig(
    text_config={
      **tower,
      "vocab_size": len(words),
      "max_position_embeddings": 64,
      "bos_token_id": len(words) - 2,
      "eos_token_id": len(words) - 1,  # Pooling reads the EOS position.
      "pad_token_id": len(words) - 1,
    },
    vision_config={**tower, "image_size": 32, "patch_size": 8},
    projection_dim=16,
  )
  FlaxCLIPModel(config, seed=0).save_pretrained(path)
  CLIPTokenizer(
    *(os.path.join(path, n) for n in ("vocab.json", "merges.txt"))
  ).save_pretrained(path)
  CLIPImageProcessor(
    size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
  ).save_pretrained(path)


@pytest.mark.slow
def test_clip_with_tiny_random_weights(tmp_path):
  os.environ.setdefault("USE_TF", "0")
  write_tiny_clip(str(tmp_path / "clip"))
  clip = clip_score.load_clip(str(tmp_path / "clip"))
  videos, prompts = alignment.reference_videos("test", 3, 4, 16, 16)
  text = clip.embed_text([*prompts, prompts[0]])
  assert text.shape == (4, 16)
  np.testing.assert_allclose(np.linalg.norm(text, axis=-1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(
    text[0], text[3], atol=1e-6
  )  # Same prompt, same embedding.
  assert not np.allclose(text[0], text[1])
  frames = clip_score.frame_embeddings(clip, videos, num_frames=2)
  assert frames.shape == (3, 2, 16)
  want = np.maximum(100 * np.einsum("nfd,nd->nf", frames, text[:3]), 0).mean()
  np.testing.assert_allclose(clip_score.clip_score(frames, text[:3]), want)
  with pytest.raises(ValueError, match="not a directory"):
    clip_score.load_clip(str(tmp_path / "nope"))
  # Through the evaluator: samples and ground truth rows, in range.
  rows = evaluate.evaluate(
    videos, prompts, (videos, prompts), ["clip"], clip_weights=str(tmp_path / "clip")
  )
  assert rows["clip_score"]["samples"] == rows["clip_score"]["ground_truth"]
  assert 0 <= rows["clip_score"]["samples"] <= 100
  assert 0 <= rows["clip_r_precision"]["samples"] <= 1


def test_map_batches_splits_each_batch_over_devices_and_keeps_order():
  seen = []

  def fn(variables, batch):
    seen.append((batch.shape[0], len(batch.sharding.device_set)))
    return batch.sum(axis=1) + variables["b"]

  x = np.arange(7 * 3, dtype=np.float32).reshape(7, 3)
  y = frechet.map_batches(fn, {"b": np.float32(1)}, x, batch_size=4)
  np.testing.assert_array_equal(y, x.sum(axis=1) + 1)  # The padding is dropped.
  split = max(d for d in (1, 2, 4) if d <= jax.local_device_count())
  assert seen == [(4, split), (4, split)]


# ----------------------------------------------------------------------------
# FVD with the shipped I3D (about a minute on a shared CPU).
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
  "kernel, strides, padding",
  [
    ((7, 7, 7), (2, 2, 2), "SAME"),  # I3D's stem.
    ((3, 3, 3), (1, 1, 1), "SAME"),
    ((1, 1, 1), (1, 1, 1), "SAME"),
    ((3, 1, 2), (2, 1, 3), "VALID"),
    ((2, 3, 3), (1, 2, 1), ((1, 2), (0, 1), (2, 0))),
  ],
)
def test_conv3d_as_2d_matches_lax_3d_convolution(kernel, strides, padding):
  from imagen_video_jax.metrics import fvd

  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 9, 11, 10, 3)).astype(np.float32)
  w = rng.normal(size=(*kernel, 3, 5)).astype(np.float32)
  want = jax.lax.conv_general_dilated(
    x, w, strides, padding, dimension_numbers=("NDHWC", "DHWIO", "NDHWC")
  )
  got = fvd.conv3d_as_2d(x, w, strides, padding)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_i3d_runs_every_convolution_as_2d(monkeypatch):
  from imagen_video_jax.metrics import fvd

  if jax.default_backend() != "cpu":
    pytest.skip("The 2-D path is used on CPU only.")
  variables = fvd.i3d_variables()
  kernels = [k for k in jax.tree.leaves(variables["params"]) if np.ndim(k) == 5]
  calls = []
  real = fvd.conv3d_as_2d
  monkeypatch.setattr(
    fvd, "conv3d_as_2d", lambda x, k, *a: calls.append(k.shape) or real(x, k, *a)
  )
  videos = jax.ShapeDtypeStruct((1, 16, 32, 32, 3), np.uint8)
  out = jax.eval_shape(fvd.i3d_logits.__wrapped__, variables, videos)
  assert out.shape == (1, fvd.FEATURE_DIM)
  assert sorted(calls) == sorted(k.shape for k in kernels) and len(calls) == 58


@pytest.mark.slow
def test_fvd_zero_on_itself_and_grows_with_perturbation():
  from imagen_video_jax.metrics import fvd

  videos, _ = alignment.reference_videos("test", 3, 8, 32, 32)
  rng = np.random.default_rng(0)

  def perturbed(scale):
    noise = rng.normal(0, scale, videos.shape)
    return np.clip(videos + noise, 0, 255).astype(np.uint8)

  feats = [
    fvd.i3d_features(v, batch_size=3) for v in (videos, perturbed(20), perturbed(80))
  ]
  assert feats[0].shape == (3, fvd.FEATURE_DIM)
  same = frechet.feature_distance(feats[0], feats[0])
  small, large = (frechet.feature_distance(feats[0], f) for f in feats[1:])
  assert abs(same) < 1e-3 and 0 < small < large


# ----------------------------------------------------------------------------
# Bouncing-digits prompt alignment.
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ground_truth():
  """40 test videos at 16 frames of 32x32, with their captions."""
  return alignment.reference_videos("test", 40, 16, 32, 32)


def test_parse_prompt_round_trips_and_rejects():
  assert alignment.parse_prompt("the cyan digit 7 is moving up and down") == (
    "cyan",
    7,
    "vertical",
  )
  for bad in ("the cyan digit 7", "the pink digit 7 is moving up and down", "hi"):
    with pytest.raises(ValueError, match=bad):
      alignment.parse_prompt(bad)


def test_alignment_on_ground_truth_is_near_ceiling(ground_truth):
  scores = alignment.alignment(*ground_truth)
  assert scores["all"] >= 0.85
  assert scores["colour"] == 1.0 and scores["axis"] == 1.0


def test_alignment_detects_wrong_prompts(ground_truth):
  videos, captions = ground_truth
  swapped = []
  for c in captions:
    colour, digit, axis = alignment.parse_prompt(c)
    colour = bd.COLOURS[(bd.colour_id(colour) + 1) % len(bd.COLOURS)]
    axis = bd.AXES[1 - bd.axis_id(axis)]
    swapped.append(bd.video_caption(colour, digit, axis))
  scores = alignment.alignment(videos, swapped)
  assert scores["all"] == 0.0 and scores["colour"] == 0.0 and scores["axis"] == 0.0
  assert scores["digit"] >= 0.85


def test_alignment_on_noise_is_about_chance(ground_truth):
  videos, captions = ground_truth
  noise = np.random.default_rng(0).integers(0, 256, videos.shape, dtype=np.uint8)
  scores = alignment.alignment(noise, captions)
  assert scores["all"] <= 0.05 and scores["digit"] <= 0.3 and scores["colour"] <= 0.4


def test_static_or_empty_glyph_fails_axis(ground_truth):
  videos = ground_truth[0][:2].copy()
  videos[0] = videos[0, :1]  # Frozen on frame 0.
  videos[1, 3] = 0  # One empty frame.
  assert alignment.judge(videos)["axis"] == [None, None]
  assert alignment.judge(np.zeros_like(videos))["digit"] == [-1, -1]


def test_digit_consistency_is_one_on_ground_truth_and_falls_with_swapped_frames(
  ground_truth,
):
  videos, captions = ground_truth
  assert alignment.alignment(videos, captions)["consistency"] >= 0.95
  # Frames 0-2 of each video from the next video (another digit, mostly):
  # the majority is the video's own digit, the borrowed frames disagree.
  mixed = videos.copy()
  t = videos.shape[1]
  mixed[:, : t // 4] = np.roll(videos, 1, axis=0)[:, : t // 4]
  seen = alignment.judge(mixed)["consistency"]
  digits = [alignment.parse_prompt(c)[1] for c in captions]
  differs = np.array(digits) != np.roll(digits, 1)
  assert np.mean(np.array(seen)[differs]) <= 1 - 0.8 * (t // 4) / t
  assert alignment.judge(np.zeros_like(videos[:1]))["consistency"] == [0.0]
