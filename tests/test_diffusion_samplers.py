"""Samplers against an exact denoiser for a 2-D Gaussian mixture.

For data x ~ sum_k pi_k N(m_k, V_k I), E[x | z_t] has a closed form (posterior
component responsibilities times per-component Wiener filters), written here
independently of the library. Fed to every sampler, it must reproduce the mixture.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_video_jax.diffusion import samplers, schedules

WEIGHTS = np.array([0.5, 0.3, 0.2], np.float32)
MEANS = np.array([[-2.0, 0.0], [1.5, 1.5], [1.0, -2.0]], np.float32)
VARS = np.array([0.25, 0.09, 0.16], np.float32)
NUM_SAMPLES = 10_000
LOGSNR_FN = schedules.get_logsnr_fn("cosine", -20.0, 20.0)


def exact_x(z: jax.Array, logsnr: jax.Array) -> jax.Array:
  """E[x | z_t] for the mixture: z [B, 2], logsnr [B] -> [B, 2]."""
  a2 = jax.nn.sigmoid(logsnr)[:, None, None]
  s2 = jax.nn.sigmoid(-logsnr)[:, None, None]
  a = jnp.sqrt(a2)
  var = a2 * VARS[None, :, None] + s2  # Marginal variance of z under component k.
  d = z[:, None, :] - a * MEANS[None]  # [B, K, 2].
  logp = jnp.log(WEIGHTS) - 0.5 * jnp.sum(d**2 / var + jnp.log(var), -1)
  resp = jax.nn.softmax(logp, -1)  # p(k | z_t).
  wiener = MEANS[None] + a * VARS[None, :, None] / var * d  # E[x | z_t, k].
  return jnp.sum(resp[..., None] * wiener, 1)


def as_output(x_hat, z, logsnr, parameterization, v_sign=1.0):
  """Expresses x_hat in a parameterization with the test's own formulas."""
  a = jnp.sqrt(jax.nn.sigmoid(logsnr))[:, None]
  s = jnp.sqrt(jax.nn.sigmoid(-logsnr))[:, None]
  eps = (z - a * x_hat) / s
  return {"x": x_hat, "eps": eps, "v": v_sign * (a * eps - s * x_hat)}[parameterization]


def mixture_zscores(x: np.ndarray) -> np.ndarray:
  """z-scores of the sample's weights, means and variances per component.

  With responsibilities r_k(x) under the true mixture, E[r_k] = pi_k,
  E[r_k (x - m_k)] = 0 and E[r_k ((x - m_k)^2 - V_k)] = 0 exactly when x follows
  the mixture; each statistic is a sample mean divided by its standard error.
  """
  x = np.asarray(x, np.float64)
  d = x[:, None, :] - MEANS[None]
  logp = np.log(WEIGHTS) - 0.5 * np.sum(d**2 / VARS[None, :, None], -1) - np.log(VARS)
  resp = np.exp(logp - logp.max(1, keepdims=True))
  resp /= resp.sum(1, keepdims=True)  # [N, K].
  stats = [resp - WEIGHTS]  # Weights.
  stats += [resp[..., None] * d]  # Means, per dimension.
  stats += [resp[..., None] * (d**2 - VARS[None, :, None])]  # Variances.
  z = [np.mean(g, 0) / (np.std(g, 0) / np.sqrt(len(x))) for g in stats]
  return np.concatenate([np.ravel(s) for s in z])


def draw(sampler, steps, gamma, parameterization, x_fn=exact_x, v_sign=1.0):
  def denoise_fn(z, logsnr, step):
    del step
    return as_output(x_fn(z, logsnr), z, logsnr, parameterization, v_sign)

  run = jax.jit(
    functools.partial(
      samplers.sample,
      denoise_fn,
      shape=(NUM_SAMPLES, 2),
      sampler=sampler,
      steps=steps,
      gamma=gamma,
      logsnr_fn=LOGSNR_FN,
      parameterization=parameterization,
    )
  )
  return np.asarray(run(jax.random.key(0)))


@pytest.mark.parametrize(
  "sampler, steps, gamma, parameterization",
  [
    ("ddim", 256, 0.0, "v"),
    ("ddim", 256, 0.0, "eps"),
    ("ddim", 256, 0.0, "x"),
    ("ancestral", 256, 0.0, "v"),
    ("ancestral", 256, 0.3, "x"),
    ("ancestral", 256, 1.0, "eps"),
    ("distilled", 512, 0.0, "v"),
  ],
)
def test_exact_denoiser_reproduces_mixture(sampler, steps, gamma, parameterization):
  x = draw(sampler, steps, gamma, parameterization)
  assert np.all(np.isfinite(x))
  z = mixture_zscores(x)
  # 15 statistics; |z| < 4.5 has a false-alarm rate ~1e-4 for the whole set.
  assert np.max(np.abs(z)) < 4.5, np.round(z, 2)


@pytest.mark.parametrize(
  "name, x_fn, v_sign",
  [
    # A model of a schedule shifted by half a nat of logSNR.
    ("wrong_schedule", lambda z, logsnr: exact_x(z, logsnr - 0.5), 1.0),
    ("wrong_v_sign", exact_x, -1.0),  # v = sigma x - alpha eps.
  ],
)
def test_wrong_denoiser_fails_the_same_check(name, x_fn, v_sign):
  x = draw("ddim", 256, 0.0, "v", x_fn=x_fn, v_sign=v_sign)
  z = mixture_zscores(x)
  assert np.max(np.abs(z)) > 10.0, (name, np.round(z, 2))


def test_single_step_returns_the_posterior_mean_of_pure_noise():
  # At lambda_min = -20, z_1 carries no information: E[x | z_1] = sum_k pi_k m_k.
  def denoise_fn(z, logsnr, step):
    del step
    return as_output(exact_x(z, logsnr), z, logsnr, "v")

  for sampler in samplers.SAMPLERS:
    x = samplers.sample(
      denoise_fn,
      jax.random.key(1),
      (4, 2),
      sampler=sampler,
      steps=1,
      logsnr_fn=LOGSNR_FN,
    )
    np.testing.assert_allclose(x, np.broadcast_to(WEIGHTS @ MEANS, (4, 2)), atol=1e-3)


@pytest.mark.parametrize(
  "sampler, gamma",
  [("ancestral", 0.0), ("ancestral", 0.5), ("ancestral", 1.0), ("ddim", 0.0)],
)
def test_one_step_variance_matches_eq_4(sampler, gamma):
  # x-model predicting 0 at step 0, then z itself: the output is z_{t_1}.
  def denoise_fn(z, logsnr, step):
    del logsnr
    return jnp.where(step == 0, 0.0, z)

  n = 40_000
  x = samplers.sample(
    denoise_fn,
    jax.random.key(2),
    (n, 1),
    sampler=sampler,
    steps=2,
    gamma=gamma,
    logsnr_fn=LOGSNR_FN,
    parameterization="x",
  )
  lt, ls = -20.0, float(LOGSNR_FN(0.5))  # t_0 = 1, t_1 = 1/2; z_{t_0} ~ N(0, 1).
  s2t, s2s = 1 / (1 + np.exp(lt)), 1 / (1 + np.exp(ls))
  one_minus = -np.expm1(lt - ls)
  if sampler == "ddim":  # z_s = sigma_s eps_hat = (sigma_s / sigma_t) z_t.
    expected = s2s / s2t
  else:  # Mean coefficient of z_t in eq. 3, then eq. 4's interpolated variance.
    coef = np.exp(lt - ls) * np.sqrt((1 - s2s) / (1 - s2t))
    expected = coef**2 + (one_minus * s2s) ** (1 - gamma) * (one_minus * s2t) ** gamma
  got = float(np.var(np.asarray(x)))
  assert abs(got / expected - 1) < 5 * np.sqrt(2 / n), (got, expected)


def test_denoise_fn_sees_the_grid_and_step_index():
  seen = []

  def denoise_fn(z, logsnr, step):
    seen.append(None)
    jax.debug.callback(
      lambda lam, i: seen.append((float(lam[0]), int(i))), logsnr, step
    )
    return jnp.zeros_like(z)

  samplers.sample(
    denoise_fn, jax.random.key(0), (2, 3), sampler="ddim", steps=4, logsnr_fn=LOGSNR_FN
  )
  calls = [c for c in seen if c is not None]
  assert len(seen) - len(calls) == 1  # Traced once: a single loop.
  expected = LOGSNR_FN(jnp.linspace(1.0, 0.0, 5))[:4]
  np.testing.assert_allclose([c[0] for c in calls], expected, rtol=1e-5)
  assert [c[1] for c in calls] == [0, 1, 2, 3]


@pytest.mark.parametrize(
  "kwargs, culprit",
  [
    (dict(gamma=-0.1), "gamma=-0.1"),
    (dict(gamma=1.5), "gamma=1.5"),
    (dict(steps=0), "steps=0"),
    (dict(sampler="euler"), "'euler'"),
    (dict(parameterization="score"), "'score'"),
  ],
)
def test_bad_input_raises(kwargs, culprit):
  args = dict(sampler="ancestral", steps=4, gamma=0.3, logsnr_fn=LOGSNR_FN)
  args.update(kwargs)
  with pytest.raises(ValueError, match=culprit):
    samplers.sample(lambda z, lam, i: z, jax.random.key(0), (2, 2), **args)
