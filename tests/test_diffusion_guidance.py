"""Classifier-free guidance (eq. 5), weight schedules and thresholding."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_video_jax.diffusion import guidance, samplers, schedules
from imagen_video_jax.diffusion import parameterizations as param_lib

SHAPE = (6, 2, 3, 3, 3)  # [B, T, H, W, C].


@pytest.fixture(scope="module")
def setup():
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  z = jax.random.normal(k1, SHAPE)
  cond = jax.random.normal(k2, SHAPE)
  uncond = jax.random.normal(k3, SHAPE)
  logsnr = jnp.linspace(-5.0, 5.0, SHAPE[0])
  return z, cond, uncond, logsnr


def _guided(setup, weights, parameterization, space, thresholding="none", p=99.5):
  z, cond, uncond, logsnr = setup
  fn = guidance.guide(
    lambda z, logsnr, step: (cond, uncond),
    weights,
    parameterization=parameterization,
    space=space,
    thresholding=thresholding,
    percentile=p,
  )
  return fn(z, logsnr, 1)


@pytest.mark.parametrize("space", param_lib.PARAMETERIZATIONS)
@pytest.mark.parametrize("parameterization", param_lib.PARAMETERIZATIONS)
def test_zero_weight_gives_the_conditional_prediction(setup, parameterization, space):
  out = _guided(setup, jnp.zeros(3), parameterization, space)
  np.testing.assert_allclose(out, setup[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("parameterization", param_lib.PARAMETERIZATIONS)
def test_guidance_is_the_same_in_every_space(setup, parameterization):
  z, cond, uncond, logsnr = setup
  w = 3.0
  outs = [
    _guided(setup, jnp.array([0.0, w, 0.0]), parameterization, space)
    for space in param_lib.PARAMETERIZATIONS
  ]
  # eq. 5 written out in x space with the test's own conversions.
  a = jnp.sqrt(jax.nn.sigmoid(logsnr))[:, None, None, None, None]
  s = jnp.sqrt(jax.nn.sigmoid(-logsnr))[:, None, None, None, None]
  to_x = {
    "x": lambda o: o,
    "eps": lambda o: (z - s * o) / a,
    "v": lambda o: a * z - s * o,
  }
  x_tilde = (1 + w) * to_x[parameterization](cond) - w * to_x[parameterization](uncond)
  for out in outs:
    x_out = to_x[parameterization](out)
    np.testing.assert_allclose(x_out, x_tilde, rtol=1e-3, atol=1e-3)


def test_weight_schedules():
  np.testing.assert_array_equal(
    guidance.guidance_weights("constant", 4, w=2.5), [2.5] * 4
  )
  got = guidance.guidance_weights(
    "oscillating", 10, high=15.0, low=1.0, warmup_fraction=0.4
  )
  np.testing.assert_array_equal(got, [15, 15, 15, 15, 1, 15, 1, 15, 1, 15])
  got = guidance.guidance_weights(
    "oscillating", 5, high=7.0, low=2.0, warmup_fraction=0
  )
  np.testing.assert_array_equal(got, [2, 7, 2, 7, 2])
  got = guidance.guidance_weights("oscillating", 3, warmup_fraction=1.0)
  np.testing.assert_array_equal(got, [15, 15, 15])


def test_thresholding():
  inside = jnp.linspace(-1.0, 1.0, 2 * 50).reshape(2, 50)
  for method in guidance.THRESHOLDING:
    np.testing.assert_array_equal(guidance.threshold(inside, method, 90.0), inside)
  wild = jnp.stack([jnp.linspace(-7.0, 3.0, 50), jnp.linspace(-0.5, 0.5, 50)])
  np.testing.assert_array_equal(
    guidance.threshold(wild, "static"), jnp.clip(wild, -1, 1)
  )
  for p in (50.0, 90.0, 100.0):
    got = np.asarray(guidance.threshold(wild, "dynamic", p))
    assert np.all(np.abs(got) <= 1.0)
    s = max(np.percentile(np.abs(np.asarray(wild[0])), p), 1.0)
    np.testing.assert_allclose(got[0], np.clip(wild[0], -s, s) / s, rtol=1e-5)
    np.testing.assert_array_equal(got[1], wild[1])  # In-range example untouched.
  np.testing.assert_allclose(
    guidance.threshold(wild, "dynamic", 100.0)[0], wild[0] / 7, rtol=1e-6
  )


@pytest.mark.parametrize("parameterization", param_lib.PARAMETERIZATIONS)
def test_thresholded_guidance_is_consistent_with_z(setup, parameterization):
  z, *_, logsnr = setup
  out = _guided(setup, jnp.full(3, 5.0), parameterization, "x", "dynamic", 99.0)
  x_hat, eps_hat, _ = param_lib.to_x_eps_v(out, z, logsnr, parameterization)
  assert np.all(np.abs(x_hat) <= 1.0 + 1e-4)
  np.testing.assert_allclose(schedules.diffuse(x_hat, logsnr, eps_hat), z, atol=1e-4)


def test_guided_sampling_uses_the_weight_of_each_step():
  fn = schedules.get_logsnr_fn("cosine")

  def model_fn(z, logsnr, step):  # cond predicts x = 1, uncond x = 0.
    return jnp.ones_like(z), jnp.zeros_like(z)

  run = functools.partial(
    samplers.sample,
    rng=jax.random.key(0),
    shape=(2, 3),
    sampler="ddim",
    steps=4,
    logsnr_fn=fn,
    parameterization="x",
  )
  weights = jnp.array([0.0, 0.0, 0.0, 2.0])
  x = jax.jit(lambda: run(guidance.guide(model_fn, weights, parameterization="x")))()
  np.testing.assert_allclose(x, 3.0)  # Last step's x~ = (1 + 2) * 1 - 2 * 0.
  clipped = guidance.guide(
    model_fn, weights, parameterization="x", thresholding="static"
  )
  np.testing.assert_allclose(run(clipped), 1.0)


@pytest.mark.parametrize(
  "call, culprit",
  [
    (lambda: guidance.guidance_weights("cosine", 4), "'cosine'"),
    (lambda: guidance.guidance_weights("constant", 0), "steps=0"),
    (lambda: guidance.guidance_weights("oscillating", 4, warmup_fraction=1.5), "1.5"),
    (lambda: guidance.threshold(jnp.ones((1, 2)), "dynamic", 0.0), "percentile=0.0"),
    (
      lambda: guidance.threshold(jnp.ones((1, 2)), "dynamic", 100.5),
      "percentile=100.5",
    ),
    (lambda: guidance.threshold(jnp.ones((1, 2)), "soft"), "'soft'"),
    (lambda: guidance.guide(None, jnp.ones(2), space="score"), "'score'"),
    (lambda: guidance.guide(None, jnp.ones(2), parameterization="mu"), "'mu'"),
    (
      lambda: guidance.guide(None, jnp.ones(2), thresholding="dynamic", percentile=-1),
      "percentile=-1",
    ),
  ],
)
def test_bad_input_raises(call, culprit):
  with pytest.raises(ValueError, match=culprit):
    call()
