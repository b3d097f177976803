"""Continuous-time logSNR schedules and the Gaussian forward process.

Imagen Video (Ho et al., 2022, Sec. 2.1) uses the continuous-time formulation of
Kingma et al. (2021): for t in [0, 1] the latent is z_t = alpha_t x + sigma_t eps
with alpha_t^2 = sigmoid(lambda_t), sigma_t^2 = sigmoid(-lambda_t) and lambda_t the
log signal-to-noise ratio, decreasing in t. Everything here is expressed through
lambda, in log space where it matters, so that values and gradients stay finite
for lambda in [-20, 20] and for adjacent steps of a fine sampling grid.

Per-example quantities (logsnr [B]) broadcast against arrays [B, ...].
"""

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
SCHEDULES = ("cosine",)


def expand_to(v: Array, ref: Array) -> Array:
  """Appends trailing singleton axes to `v` [B] (or scalar) to broadcast with ref."""
  v = jnp.asarray(v)
  return v.reshape(v.shape + (1,) * (jnp.ndim(ref) - v.ndim))


def _cosine_offsets(logsnr_min: float, logsnr_max: float) -> tuple[float, float, float]:
  """Returns (a, b, b_end) of lambda(t) = -2 log tan(a t + b); b_end = pi/2 - a - b."""
  if not logsnr_min < logsnr_max:
    raise ValueError(f"logsnr_min={logsnr_min} must be < logsnr_max={logsnr_max}.")
  b = math.atan(math.exp(-0.5 * logsnr_max))
  b_end = math.atan(math.exp(0.5 * logsnr_min))  # = pi/2 - atan(exp(-lmin/2)).
  a = 0.5 * math.pi - b_end - b
  return a, b, b_end


def cosine_logsnr(
  t: Array, logsnr_min: float = -20.0, logsnr_max: float = 20.0
) -> Array:
  """Continuous cosine logSNR lambda(t) = -2 log tan(a t + b) (Sec. 2.1).

  b = atan(exp(-lambda_max / 2)), a = atan(exp(-lambda_min / 2)) - b, so that
  lambda(0) = lambda_max and lambda(1) = lambda_min. Near t = 1 the angle a t + b
  approaches pi/2 and loses precision, so there the identical form
  lambda = 2 log tan(a (1 - t) + b_end) is used.

  Args:
    t: times in [0, 1], any shape.
    logsnr_min: lambda at t = 1.
    logsnr_max: lambda at t = 0.

  Returns:
    lambda(t), same shape as t.
  """
  a, b, b_end = _cosine_offsets(logsnr_min, logsnr_max)
  t = jnp.asarray(t, jnp.float32)
  head = -2.0 * jnp.log(jnp.tan(a * t + b))  # lambda = -2 log tan(a t + b).
  tail = 2.0 * jnp.log(jnp.tan(a * (1.0 - t) + b_end))  # tan(pi/2 - u) = 1/tan(u).
  return jnp.where(a * t + b < 0.25 * math.pi, head, tail)


def cosine_t(
  logsnr: Array, logsnr_min: float = -20.0, logsnr_max: float = 20.0
) -> Array:
  """Inverse of `cosine_logsnr`: t = (atan(exp(-lambda / 2)) - b) / a, any shape."""
  a, b, b_end = _cosine_offsets(logsnr_min, logsnr_max)
  logsnr = jnp.asarray(logsnr, jnp.float32)
  head = (jnp.arctan(jnp.exp(-0.5 * logsnr)) - b) / a
  tail = 1.0 - (jnp.arctan(jnp.exp(0.5 * logsnr)) - b_end) / a  # Symmetric form.
  return jnp.where(logsnr > 0.0, head, tail)


def get_logsnr_fn(
  name: str, logsnr_min: float = -20.0, logsnr_max: float = 20.0
) -> Callable[[Array], Array]:
  """Returns the schedule t -> lambda(t) named `name` (config.diffusion.schedule)."""
  if name == "cosine":
    _cosine_offsets(logsnr_min, logsnr_max)  # Validates the range now.
    return functools.partial(
      cosine_logsnr, logsnr_min=logsnr_min, logsnr_max=logsnr_max
    )
  raise ValueError(f"Unknown schedule {name!r}; expected one of {SCHEDULES}.")


def log1mexp(x: Array) -> Array:
  """log(1 - exp(x)) for x < 0, stable at both ends (Maechler, 2012).

  x is clamped to <= -1e-30 so that x = 0 gives a large finite value and gradient
  instead of -inf / NaN.
  """
  x = jnp.minimum(x, -1e-30)
  small = jnp.where(x > -0.693, x, -1.0)  # Double-where keeps both branches safe.
  large = jnp.where(x > -0.693, -1.0, x)
  return jnp.where(x > -0.693, jnp.log(-jnp.expm1(small)), jnp.log1p(-jnp.exp(large)))


def log_alpha_sigma(logsnr: Array) -> tuple[Array, Array]:
  """Returns (log alpha^2, log sigma^2) = (log sigmoid(l), log sigmoid(-l))."""
  return jax.nn.log_sigmoid(logsnr), jax.nn.log_sigmoid(-logsnr)


def alpha_sigma(logsnr: Array) -> tuple[Array, Array]:
  """Returns (alpha, sigma) with alpha^2 = sigmoid(l), sigma^2 = sigmoid(-l)."""
  log_a2, log_s2 = log_alpha_sigma(logsnr)
  return jnp.exp(0.5 * log_a2), jnp.exp(0.5 * log_s2)


def diffuse(x: Array, logsnr: Array, noise: Array) -> Array:
  """Samples q(z_t | x): z_t = alpha_t x + sigma_t eps (Sec. 2.1).

  Args:
    x: clean data [B, ...].
    logsnr: lambda_t [B] (or scalar).
    noise: standard normal eps, shaped like x.

  Returns:
    z_t shaped like x.
  """
  alpha, sigma = alpha_sigma(expand_to(logsnr, x))
  return alpha * x + sigma * noise


def log_var_t_given_s(logsnr_t: Array, logsnr_s: Array) -> Array:
  """log sigma^2_{t|s} = log(1 - e^{l_t - l_s}) + log sigma_t^2 (eq. 1), l_t < l_s."""
  return log1mexp(logsnr_t - logsnr_s) + jax.nn.log_sigmoid(-logsnr_t)


def log_var_posterior(logsnr_t: Array, logsnr_s: Array) -> Array:
  """log sigma~^2_{s|t} = log(1 - e^{l_t - l_s}) + log sigma_s^2 (eq. 3), l_t < l_s."""
  return log1mexp(logsnr_t - logsnr_s) + jax.nn.log_sigmoid(-logsnr_s)


def q_t_given_s(logsnr_t: Array, logsnr_s: Array) -> tuple[Array, Array]:
  """Transition q(z_t | z_s) = N(alpha_{t|s} z_s, sigma^2_{t|s}) for s < t (eq. 1).

  Args:
    logsnr_t: lambda_t, any shape (noisier, lambda_t < lambda_s).
    logsnr_s: lambda_s, broadcastable with logsnr_t.

  Returns:
    (alpha_{t|s} = alpha_t / alpha_s, sigma^2_{t|s} = (1 - e^{l_t - l_s}) sigma_t^2).
  """
  log_a2_t, _ = log_alpha_sigma(logsnr_t)
  log_a2_s, _ = log_alpha_sigma(logsnr_s)
  alpha_ts = jnp.exp(0.5 * (log_a2_t - log_a2_s))  # alpha_{t|s} = alpha_t / alpha_s.
  return alpha_ts, jnp.exp(log_var_t_given_s(logsnr_t, logsnr_s))


def q_posterior(
  z_t: Array, x: Array, logsnr_t: Array, logsnr_s: Array
) -> tuple[Array, Array]:
  """Posterior q(z_s | z_t, x) = N(mu~_{s|t}, sigma~^2_{s|t}) for s < t (eq. 3).

  mu~_{s|t} = e^{l_t - l_s} (alpha_s / alpha_t) z_t + (1 - e^{l_t - l_s}) alpha_s x,
  sigma~^2_{s|t} = (1 - e^{l_t - l_s}) sigma_s^2.

  Args:
    z_t: noisy latent [B, ...].
    x: clean data (or its prediction x_hat), shaped like z_t.
    logsnr_t: lambda_t [B] (or scalar).
    logsnr_s: lambda_s [B] (or scalar), lambda_s > lambda_t.

  Returns:
    (mean shaped like z_t, variance broadcastable to z_t).
  """
  logsnr_t, logsnr_s = expand_to(logsnr_t, z_t), expand_to(logsnr_s, z_t)
  log_a2_t, _ = log_alpha_sigma(logsnr_t)
  log_a2_s, _ = log_alpha_sigma(logsnr_s)
  r = jnp.exp(logsnr_t - logsnr_s)  # e^{lambda_t - lambda_s} in (0, 1].
  # eq. 3: the one-minus term is expm1 to keep precision for adjacent steps.
  mean = (
    r * jnp.exp(0.5 * (log_a2_s - log_a2_t)) * z_t
    - jnp.expm1(logsnr_t - logsnr_s) * jnp.exp(0.5 * log_a2_s) * x
  )
  return mean, jnp.exp(log_var_posterior(logsnr_t, logsnr_s))
