"""Diffusion training losses (eq. 2, v-MSE, SNR-weighted) and the draw of t.

All five are weighted squared errors of the denoised prediction, computed in the
space where the weight is one so that no huge factor multiplies a rounded error:
  eps_mse        ||eps - eps_hat||^2      = SNR ||x - x_hat||^2          (eq. 2)
  v_mse          ||v - v_hat||^2          = (1 + SNR) ||x - x_hat||^2
  truncated_snr  max(SNR, 1) ||x - x_hat||^2 = sigmoid(|lambda|) ||v - v_hat||^2
                 (Salimans & Ho, 2022)
  min_snr        min(SNR, 5) ||x - x_hat||^2 = min(SNR, 5) / (1 + SNR) ||v - v_hat||^2
                 (Hang et al., 2023, with their gamma = 5)
  clipped_snr    clip(SNR, 1, 5) ||x - x_hat||^2 (both of the above: v-MSE's
                 weight at high noise, min-SNR's at low noise)
Squared errors are averaged over the non-batch axes.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from imagen_video_jax.diffusion import parameterizations as param_lib
from imagen_video_jax.diffusion import schedules

Array = jax.Array
# The SNR-weighted losses: clip(SNR, low, high) ||x - x_hat||^2 (None: no bound).
SNR_CLIPS = {
  "truncated_snr": (1.0, None),
  "min_snr": (0.0, 5.0),
  "clipped_snr": (1.0, 5.0),
}
LOSSES = ("v_mse", "eps_mse", *SNR_CLIPS)
T_SAMPLING = ("uniform", "stratified", "antithetic")


def sample_t(rng: Array, batch: int, method: str = "uniform") -> Array:
  """Draws diffusion times t in [0, 1), [batch].

  'uniform': i.i.d. U[0, 1). 'stratified': one uniform offset u and
  t_i = (u + i / B) mod 1, the low-discrepancy sampler of Kingma et al. (2021).
  'antithetic': pairs (u, 1 - u) for the two halves of the batch.
  """
  if method == "uniform":
    return jax.random.uniform(rng, (batch,))
  if method == "stratified":
    u = jax.random.uniform(rng, ())
    return jnp.mod(u + jnp.arange(batch) / batch, 1.0)
  if method == "antithetic":
    u = jax.random.uniform(rng, ((batch + 1) // 2,))
    return jnp.concatenate([u, 1.0 - u])[:batch]
  raise ValueError(f"Unknown t_sampling {method!r}; expected one of {T_SAMPLING}.")


def _check_loss(loss: str) -> None:
  if loss not in LOSSES:
    raise ValueError(f"Unknown loss {loss!r}; expected one of {LOSSES}.")


def _mean_sq(a: Array) -> Array:
  """Mean of a^2 over all but the first axis: [B, ...] -> [B]."""
  return jnp.mean(jnp.square(a).reshape(a.shape[0], -1), axis=-1)


def weighted_loss(
  output: Array,
  x: Array,
  noise: Array,
  z: Array,
  logsnr: Array,
  *,
  parameterization: str,
  loss: str,
) -> Array:
  """Per-example loss [B] of a model output for clean x [B, ...] and its noise."""
  _check_loss(loss)
  _, eps_hat, v_hat = param_lib.to_x_eps_v(output, z, logsnr, parameterization)
  if loss == "eps_mse":
    return _mean_sq(noise - eps_hat)  # eq. 2 with w(lambda) = 1.
  v = param_lib.target(x, noise, logsnr, "v")
  v_err = _mean_sq(v - v_hat)
  if loss == "v_mse":
    return v_err
  # clip(SNR, low, high) / (1 + SNR) = min(max(SNR, low), high) / (1 + SNR), with
  # SNR / (1 + SNR) = sigmoid(lambda) and 1 / (1 + SNR) = sigmoid(-lambda): no
  # exp(lambda) to overflow (truncated_snr's is sigmoid(|lambda|)).
  low, high = SNR_CLIPS[loss]
  weight = jnp.maximum(jax.nn.sigmoid(logsnr), low * jax.nn.sigmoid(-logsnr))
  if high is not None:
    weight = jnp.minimum(weight, high * jax.nn.sigmoid(-logsnr))
  return weight * v_err


def diffusion_loss(
  denoise_fn: Callable[[Array, Array, Any], Array],
  x: Array,
  rng: Array,
  cond: Any,
  *,
  logsnr_fn: Callable[[Array], Array],
  parameterization: str = "v",
  loss: str = "v_mse",
  t_sampling: str = "uniform",
  late_loss: str = "",
  late: Array | bool = False,
) -> tuple[Array, Array]:
  """Monte-Carlo diffusion loss for a clean batch.

  Args:
    denoise_fn: (z [B, ...], logsnr [B], cond) -> model output shaped like z.
    x: clean data [B, ...] in [-1, 1].
    rng: PRNG key for t and the noise.
    cond: conditioning pytree passed through to denoise_fn.
    logsnr_fn: schedule t -> lambda(t) (see schedules.get_logsnr_fn).
    parameterization: the model's output space, 'v' | 'eps' | 'x'.
    loss: one of LOSSES.
    t_sampling: 'uniform' | 'stratified' | 'antithetic'.
    late_loss: one of LOSSES, or '' for none: the loss where `late` holds.
    late: scalar bool (traced: e.g. step >= a switch step); selects late_loss.

  Returns:
    (per-example loss [B], lambda used [B]) for per-lambda-bucket logging.
  """
  param_lib.check_parameterization(parameterization)
  _check_loss(loss)
  if late_loss:
    _check_loss(late_loss)
  t_rng, noise_rng = jax.random.split(rng)
  logsnr = logsnr_fn(sample_t(t_rng, x.shape[0], t_sampling))
  noise = jax.random.normal(noise_rng, x.shape, x.dtype)
  z = schedules.diffuse(x, logsnr, noise)  # z_t = alpha_t x + sigma_t eps.
  output = denoise_fn(z, logsnr, cond)
  per_example = weighted_loss(
    output, x, noise, z, logsnr, parameterization=parameterization, loss=loss
  )
  if late_loss:  # Same draw and forward pass; only the weighting changes.
    per_late = weighted_loss(
      output, x, noise, z, logsnr, parameterization=parameterization, loss=late_loss
    )
    per_example = jnp.where(late, per_late, per_example)
  return per_example, logsnr
