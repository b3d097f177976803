"""Identities of the schedule, forward process, parameterizations and losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_video_jax.diffusion import losses, schedules
from imagen_video_jax.diffusion import parameterizations as param_lib

GRID_1024 = schedules.cosine_logsnr(jnp.linspace(1.0, 0.0, 1025))  # lambda_i.


def reference_logsnr(t, lmin, lmax):
  """-2 log tan(a t + b) in float64 (Sec. 2.1)."""
  b = np.arctan(np.exp(-lmax / 2))
  a = np.arctan(np.exp(-lmin / 2)) - b
  return -2.0 * np.log(np.tan(a * np.asarray(t, np.float64) + b))


@pytest.mark.parametrize("lmin, lmax", [(-20.0, 20.0), (-10.0, 15.0)])
def test_cosine_logsnr_endpoints_monotone_and_closed_form(lmin, lmax):
  t = np.linspace(0.0, 1.0, 1025)
  lam = np.asarray(schedules.cosine_logsnr(t, lmin, lmax))
  np.testing.assert_allclose(lam[[0, -1]], [lmax, lmin], atol=1e-4)
  assert np.all(np.diff(lam) < 0)
  np.testing.assert_allclose(lam, reference_logsnr(t, lmin, lmax), atol=2e-4)


def test_cosine_t_inverts_cosine_logsnr():
  t = np.linspace(0.0, 1.0, 1025)
  np.testing.assert_allclose(
    schedules.cosine_t(schedules.cosine_logsnr(t)), t, atol=2e-6
  )
  lam = np.linspace(-20.0, 20.0, 401)
  np.testing.assert_allclose(
    schedules.cosine_logsnr(schedules.cosine_t(lam)), lam, atol=2e-3
  )
  fn = schedules.get_logsnr_fn("cosine", -5.0, 7.0)
  np.testing.assert_allclose(fn(jnp.array([0.0, 1.0])), [7.0, -5.0], atol=1e-5)


def test_alpha_sigma_identities():
  lam = jnp.linspace(-20.0, 20.0, 801)
  alpha, sigma = schedules.alpha_sigma(lam)
  np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, rtol=1e-6)
  np.testing.assert_allclose(jnp.log(alpha**2) - jnp.log(sigma**2), lam, atol=1e-4)


def test_diffuse_broadcasts_per_example():
  k1, k2 = jax.random.split(jax.random.key(0))
  x = jax.random.normal(k1, (3, 2, 4, 4, 3))
  noise = jax.random.normal(k2, x.shape)
  lam = jnp.array([-3.0, 0.0, 5.0])
  z = schedules.diffuse(x, lam, noise)
  a2 = 1.0 / (1.0 + np.exp(-np.asarray(lam)))[:, None, None, None, None]
  np.testing.assert_allclose(
    z, np.sqrt(a2) * x + np.sqrt(1 - a2) * noise, rtol=1e-5, atol=1e-6
  )


def _pairs():
  """(lambda_t, lambda_s) with lambda_t < lambda_s: adjacent 1024-grid steps and far pairs."""
  far_t = jnp.array([-20.0, -20.0, -5.0, 0.0, 3.0, 19.0])
  far_s = jnp.array([20.0, -19.5, 5.0, 1e-3, 20.0, 20.0])
  return jnp.concatenate([GRID_1024[:-1], far_t]), jnp.concatenate(
    [GRID_1024[1:], far_s]
  )


def test_q_t_given_s_composes_with_q_s_given_x():
  lt, ls = _pairs()
  alpha_ts, var_ts = schedules.q_t_given_s(lt, ls)
  (a_t, s_t), (a_s, s_s) = schedules.alpha_sigma(lt), schedules.alpha_sigma(ls)
  np.testing.assert_allclose(alpha_ts * a_s, a_t, rtol=1e-5)  # Mean: alpha_t x.
  np.testing.assert_allclose(alpha_ts**2 * s_s**2 + var_ts, s_t**2, rtol=1e-5)  # eq. 1.
  # Monte Carlo: z_s ~ q(z_s | x), z_t ~ q(z_t | z_s) has mean alpha_t x, var sigma_t^2.
  lt, ls, x = jnp.float32(-1.0), jnp.float32(2.0), 0.7
  e1, e2 = jax.random.normal(jax.random.key(3), (2, 200_000))
  alpha_ts, var_ts = schedules.q_t_given_s(lt, ls)
  z_t = (
    alpha_ts * schedules.diffuse(jnp.full_like(e1, x), ls, e1) + jnp.sqrt(var_ts) * e2
  )
  a_t, s_t = schedules.alpha_sigma(lt)
  assert abs(float(z_t.mean()) - float(a_t) * x) < 4 * float(s_t) / np.sqrt(2e5)
  assert abs(float(z_t.var()) / float(s_t) ** 2 - 1.0) < 4 * np.sqrt(2 / 2e5)


def test_q_posterior_matches_gaussian_conditioning():
  lt, ls = _pairs()
  z_t = jnp.linspace(-2.0, 2.0, lt.shape[0])
  x = jnp.cos(jnp.arange(lt.shape[0], dtype=jnp.float32))
  mean, var = schedules.q_posterior(z_t, x, lt, ls)
  # Joint of (z_s, z_t) given x: Cov(z_s, z_t) = alpha_{t|s} sigma_s^2.
  lt64, ls64 = np.float64(lt), np.float64(ls)
  a2t, a2s = 1 / (1 + np.exp(-lt64)), 1 / (1 + np.exp(-ls64))
  s2t, s2s = 1 - a2t, 1 - a2s
  a_ts = np.sqrt(a2t / a2s)
  cov = a_ts * s2s
  ref_mean = np.sqrt(a2s) * x + cov / s2t * (z_t - np.sqrt(a2t) * x)
  ref_var = s2s - cov**2 / s2t
  np.testing.assert_allclose(mean, ref_mean, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(var, ref_var, rtol=2e-3, atol=1e-12)


def test_values_and_gradients_are_finite():
  lt, ls = _pairs()

  def total(lt, ls):
    mean, var = schedules.q_posterior(jnp.ones_like(lt), jnp.ones_like(lt), lt, ls)
    alpha_ts, var_ts = schedules.q_t_given_s(lt, ls)
    return jnp.sum(mean + jnp.log(var) + alpha_ts + jnp.log(var_ts))

  value_and_grads = jax.jit(jax.value_and_grad(total, argnums=(0, 1)))
  value, grads = value_and_grads(lt, ls)
  assert np.isfinite(value) and np.all(np.isfinite(grads))
  # Equal logSNRs (a zero-length step) stay finite too.
  assert np.all(np.isfinite(value_and_grads(jnp.zeros(1), jnp.zeros(1))[1]))
  t = jnp.linspace(0.0, 1.0, 1025)
  lam = jnp.linspace(-20.0, 20.0, 401)
  grad_t, grad_lam = jax.jit(
    lambda t, lam: (
      jax.vmap(jax.grad(schedules.cosine_logsnr))(t),
      jax.vmap(jax.grad(schedules.cosine_t))(lam),
    )
  )(t, lam)
  assert np.all(np.isfinite(grad_t)) and np.all(np.isfinite(grad_lam))
  assert np.all(grad_t < 0) and np.all(grad_lam < 0)


@pytest.mark.parametrize("parameterization", param_lib.PARAMETERIZATIONS)
def test_parameterization_round_trip(parameterization):
  k1, k2 = jax.random.split(jax.random.key(1))
  x = jax.random.normal(k1, (9, 5))
  eps = jax.random.normal(k2, (9, 5))
  lam = jnp.linspace(-8.0, 8.0, 9)
  z = schedules.diffuse(x, lam, eps)
  out = param_lib.target(x, eps, lam, parameterization)
  x_hat, eps_hat, v_hat = param_lib.to_x_eps_v(out, z, lam, parameterization)
  alpha, sigma = schedules.alpha_sigma(lam[:, None])
  np.testing.assert_allclose(x_hat, x, atol=2e-3)
  np.testing.assert_allclose(eps_hat, eps, atol=2e-3)
  np.testing.assert_allclose(v_hat, alpha * eps - sigma * x, atol=2e-3)  # Sec. 2.4.


def test_losses_match_their_snr_weights():
  k1, k2, k3 = jax.random.split(jax.random.key(2), 3)
  x = jax.random.normal(k1, (7, 6))
  noise = jax.random.normal(k2, (7, 6))
  err = 0.1 * jax.random.normal(k3, (7, 6))
  lam = jnp.linspace(-6.0, 6.0, 7)
  z = schedules.diffuse(x, lam, noise)
  snr = np.exp(np.float64(lam))
  x_err = np.mean(np.float64(err) ** 2, axis=1)
  weights = {
    "eps_mse": snr,
    "v_mse": 1 + snr,
    "truncated_snr": np.maximum(snr, 1),
    "min_snr": np.minimum(snr, 5),  # lam spans log 5 = 1.6: both branches.
    "clipped_snr": np.clip(snr, 1, 5),
  }
  for parameterization in param_lib.PARAMETERIZATIONS:
    # The output of a model whose x prediction is off by err.
    x_hat = x + err
    output = param_lib.from_x_eps(
      x_hat, param_lib.eps_from_x(z, x_hat, lam), lam, parameterization
    )
    for loss, weight in weights.items():
      got = losses.weighted_loss(
        output, x, noise, z, lam, parameterization=parameterization, loss=loss
      )
      np.testing.assert_allclose(
        got, weight * x_err, rtol=2e-3, err_msg=f"{parameterization} {loss}"
      )


def test_diffusion_loss_of_the_true_denoiser_is_zero():
  x = jax.random.normal(jax.random.key(4), (8, 3, 2))

  def denoise_fn(z, logsnr, cond):  # Knows x (passed as cond): returns the target.
    return param_lib.target(cond, param_lib.eps_from_x(z, cond, logsnr), logsnr, "v")

  fn = schedules.get_logsnr_fn("cosine", -10.0, 10.0)
  loss, lam = losses.diffusion_loss(denoise_fn, x, jax.random.key(5), x, logsnr_fn=fn)
  assert loss.shape == lam.shape == (8,)
  assert np.all((lam >= -10) & (lam <= 10))
  np.testing.assert_allclose(loss, 0.0, atol=1e-5)


def test_the_late_loss_replaces_the_loss_where_late_holds():
  x = jax.random.uniform(jax.random.key(8), (16, 3), minval=-1, maxval=1)
  fn = schedules.get_logsnr_fn("cosine", -10.0, 10.0)

  def run(late, **kwargs):
    return losses.diffusion_loss(
      lambda z, lam, c: 0.5 * z,
      x,
      jax.random.key(9),
      None,
      logsnr_fn=fn,
      late=late,
      **kwargs,
    )[0]

  early, min_snr = run(False), run(False, loss="min_snr")
  assert not np.allclose(early, min_snr)  # The two weightings differ here.
  np.testing.assert_array_equal(run(False, late_loss="min_snr"), early)
  np.testing.assert_array_equal(run(True, late_loss="min_snr"), min_snr)
  np.testing.assert_array_equal(run(jnp.array(True), late_loss=""), early)


def test_t_sampling():
  t = np.asarray(losses.sample_t(jax.random.key(0), 16, "stratified"))
  assert sorted(np.floor(t * 16).astype(int)) == list(range(16))  # One per stratum.
  t = np.asarray(losses.sample_t(jax.random.key(0), 16, "antithetic"))
  np.testing.assert_allclose(t[:8] + t[8:], 1.0, atol=1e-6)
  t = np.asarray(losses.sample_t(jax.random.key(0), 4096, "uniform"))
  assert np.all((t >= 0) & (t < 1)) and abs(t.mean() - 0.5) < 4 * np.sqrt(1 / 12 / 4096)


@pytest.mark.parametrize("loss", losses.LOSSES)
@pytest.mark.parametrize("parameterization", param_lib.PARAMETERIZATIONS)
def test_finite_losses_and_gradients_at_extreme_logsnr(parameterization, loss):
  x = jax.random.uniform(jax.random.key(6), (4, 3), minval=-1, maxval=1)

  def mean_loss(scale, logsnr_value):
    def denoise_fn(z, logsnr, cond):
      del logsnr, cond
      return scale * z

    per_example, _ = losses.diffusion_loss(
      denoise_fn,
      x,
      jax.random.key(7),
      None,
      logsnr_fn=lambda t: jnp.full_like(t, logsnr_value),
      parameterization=parameterization,
      loss=loss,
      t_sampling="antithetic",
    )
    return per_example.mean()

  value, grad = jax.jit(jax.vmap(jax.value_and_grad(mean_loss), (None, 0)))(
    0.5, jnp.array([-20.0, 20.0])
  )
  assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad)), (value, grad)


def _loss_of_zeros(**kwargs):
  return losses.diffusion_loss(
    lambda z, lam, c: z,
    jnp.zeros((2, 2)),
    jax.random.key(0),
    None,
    logsnr_fn=schedules.cosine_logsnr,
    **kwargs,
  )


@pytest.mark.parametrize(
  "call, culprit",
  [
    (lambda: schedules.get_logsnr_fn("linear"), "'linear'"),
    (lambda: schedules.get_logsnr_fn("cosine", 5.0, -5.0), "logsnr_min=5.0"),
    (lambda: param_lib.to_x_eps_v(jnp.zeros(2), jnp.zeros(2), 0.0, "score"), "'score'"),
    (lambda: losses.sample_t(jax.random.key(0), 4, "sobol"), "'sobol'"),
    (lambda: _loss_of_zeros(loss="l1"), "'l1'"),
    (lambda: _loss_of_zeros(late_loss="snr"), "'snr'"),
  ],
)
def test_bad_input_raises(call, culprit):
  with pytest.raises(ValueError, match=culprit):
    call()
