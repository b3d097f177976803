"""Tests of the SR-stage conditioning: upsampling and noise augmentation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_video_jax.cascade import conditioning


def _video(shape, seed=0):
  return jnp.asarray(np.random.RandomState(seed).uniform(-1, 1, shape), jnp.float32)


def test_temporal_upsample_repeats_frames():
  video = _video((2, 3, 4, 5, 3))
  out = conditioning.upsample(video, 6, 4, 5)
  assert out.shape == (2, 6, 4, 5, 3)
  for t in range(6):
    np.testing.assert_array_equal(out[:, t], video[:, t // 2])


def test_temporal_upsample_linear_blends_neighbours():
  video = _video((2, 3, 4, 5, 3))
  out = np.asarray(conditioning.upsample(video, 6, 4, 5, temporal="linear"))
  v = np.asarray(video)
  # Input frame k lands on output frame 2k; frame 2k + 1 is the mean of k, k + 1;
  # after the last input frame there is nothing to blend with, so it repeats.
  expected = [v[:, 0], (v[:, 0] + v[:, 1]) / 2, v[:, 1], (v[:, 1] + v[:, 2]) / 2]
  expected += [v[:, 2], v[:, 2]]
  np.testing.assert_allclose(out, np.stack(expected, axis=1), atol=1e-6)
  thirds = np.asarray(conditioning.upsample(video, 9, 4, 5, temporal="linear"))
  np.testing.assert_allclose(thirds[:, 4], v[:, 1] * 2 / 3 + v[:, 2] / 3, atol=1e-6)
  with pytest.raises(ValueError, match="temporal='cubic'"):
    conditioning.upsample(video, 6, 4, 5, temporal="cubic")


def test_spatial_upsample_is_bilinear():
  # A linear ramp along width stays linear under bilinear x2 interpolation
  # (away from the borders, where edge clamping applies).
  w_in = 8
  ramp = jnp.arange(w_in, dtype=jnp.float32)
  video = jnp.broadcast_to(ramp[None, None, None, :, None], (1, 2, 4, w_in, 3))
  out = conditioning.upsample(video, 2, 8, 2 * w_in)
  assert out.shape == (1, 2, 8, 16, 3)
  # Half-pixel centres: output pixel j sits at input coordinate (j + 0.5) / 2 - 0.5.
  expected = (np.arange(2 * w_in) + 0.5) / 2 - 0.5
  np.testing.assert_allclose(out[0, 0, 3, 1:-1, 0], expected[1:-1], atol=1e-5)
  # Rows are constant since the input is constant along height.
  np.testing.assert_allclose(out[0, 1, :, 5, 2], np.full(8, expected[5]), atol=1e-5)


def test_upsample_identity_and_both_axes():
  video = _video((1, 2, 4, 4, 3))
  np.testing.assert_array_equal(conditioning.upsample(video, 2, 4, 4), video)
  out = conditioning.upsample(video, 4, 8, 8)
  ref = jax.image.resize(jnp.repeat(video, 2, axis=1), (1, 4, 8, 8, 3), "bilinear")
  np.testing.assert_allclose(out, ref, atol=1e-6)


@pytest.mark.parametrize("frames", [3, 0])
def test_upsample_rejects_non_multiple_frames(frames):
  with pytest.raises(ValueError, match="frames"):
    conditioning.upsample(_video((1, 2, 4, 4, 3)), frames, 4, 4)


def test_noise_augment_closed_form():
  video = _video((3, 2, 4, 4, 3))
  aug_logsnr = jnp.array([-3.0, jnp.log(3.0), 8.0])
  rng = jax.random.key(1)
  z, noise = conditioning.noise_augment(video, rng, aug_logsnr)
  np.testing.assert_array_equal(noise, jax.random.normal(rng, video.shape))
  # alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda) (paper Sec. 2.1).
  lam = np.asarray(aug_logsnr, np.float64)[:, None, None, None, None]
  alpha = np.sqrt(1 / (1 + np.exp(-lam)))
  sigma = np.sqrt(1 / (1 + np.exp(lam)))
  expected = alpha * np.asarray(video) + sigma * np.asarray(noise)
  np.testing.assert_allclose(z, expected, rtol=1e-5, atol=1e-5)


def test_noise_augment_checks_logsnr_shape():
  with pytest.raises(ValueError, match="aug_logsnr"):
    conditioning.noise_augment(_video((2, 1, 2, 2, 3)), jax.random.key(0), 1.0)
