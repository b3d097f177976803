"""Model output parameterizations: v (default), eps and x (Sec. 2.4).

With z = alpha x + sigma eps and v = alpha eps - sigma x (Salimans & Ho, 2022), the
three are affine in each other given z:
  x = alpha z - sigma v,   eps = sigma z + alpha v,
  x = (z - sigma eps) / alpha,   eps = (z - alpha x) / sigma.
Each conversion below is written in the form that divides by nothing when it can.
Arrays are [B, ...]; logsnr is [B] (or scalar) and broadcasts.
"""

import jax

from imagen_video_jax.diffusion import schedules

Array = jax.Array
PARAMETERIZATIONS = ("v", "eps", "x")


def check_parameterization(parameterization: str) -> None:
  """Raises ValueError unless `parameterization` is one of PARAMETERIZATIONS."""
  if parameterization not in PARAMETERIZATIONS:
    raise ValueError(
      f"Unknown parameterization {parameterization!r}; "
      f"expected one of {PARAMETERIZATIONS}."
    )


def to_x_eps_v(
  output: Array, z: Array, logsnr: Array, parameterization: str
) -> tuple[Array, Array, Array]:
  """Converts a model output to (x_hat, eps_hat, v_hat).

  Args:
    output: model output [B, ...] in `parameterization` space.
    z: the noisy input z_t, shaped like output.
    logsnr: lambda_t [B] (or scalar).
    parameterization: 'v' | 'eps' | 'x'.

  Returns:
    (x_hat, eps_hat, v_hat), each shaped like z.
  """
  check_parameterization(parameterization)
  alpha, sigma = schedules.alpha_sigma(schedules.expand_to(logsnr, z))
  if parameterization == "v":
    v = output
    return alpha * z - sigma * v, sigma * z + alpha * v, v  # Sec. 2.4.
  if parameterization == "eps":
    eps = output
    # x = (z - sigma eps) / alpha; v = alpha eps - sigma x = (eps - sigma z) / alpha.
    return (z - sigma * eps) / alpha, eps, (eps - sigma * z) / alpha
  x = output
  # eps = (z - alpha x) / sigma; v = alpha eps - sigma x = (alpha z - x) / sigma.
  return x, (z - alpha * x) / sigma, (alpha * z - x) / sigma


def from_x_eps(x: Array, eps: Array, logsnr: Array, parameterization: str) -> Array:
  """Expresses a consistent pair (x, eps) in `parameterization` space.

  Args:
    x: data (or prediction) [B, ...].
    eps: noise (or prediction), shaped like x.
    logsnr: lambda [B] (or scalar).
    parameterization: 'v' | 'eps' | 'x'.

  Returns:
    x, eps or v = alpha eps - sigma x, shaped like x.
  """
  check_parameterization(parameterization)
  if parameterization == "x":
    return x
  if parameterization == "eps":
    return eps
  alpha, sigma = schedules.alpha_sigma(schedules.expand_to(logsnr, x))
  return alpha * eps - sigma * x  # v = alpha eps - sigma x (Sec. 2.4).


def target(x: Array, noise: Array, logsnr: Array, parameterization: str) -> Array:
  """The regression target of a model in `parameterization` space, shaped like x."""
  return from_x_eps(x, noise, logsnr, parameterization)


def eps_from_x(z: Array, x: Array, logsnr: Array) -> Array:
  """eps = (z - alpha x) / sigma: the noise implied by z and a (clipped) x."""
  alpha, sigma = schedules.alpha_sigma(schedules.expand_to(logsnr, z))
  return (z - alpha * x) / sigma
