"""Classifier-free guidance (eq. 5), guidance-weight schedules and thresholding.

Guided prediction (Ho & Salimans, 2021; paper Sec. 2.6.1, eq. 5):
  x~ = (1 + w) x_hat_c - w x_hat_u,
in x, v or eps space. Since x, v and eps are affine in each other given z with
coefficients that do not depend on the model, the three spaces give the same x~;
the choice only changes which rounding errors are made. After guidance, x~ may be
clipped (static) or dynamically thresholded (Saharia et al., 2022) at every
sampling step; eps is then recomputed from the thresholded x so that the step
stays consistent with z (Sec. 2.6.2).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from imagen_video_jax.diffusion import parameterizations as param_lib
from imagen_video_jax.diffusion import schedules

Array = jax.Array
WEIGHT_KINDS = ("constant", "oscillating")
THRESHOLDING = ("none", "static", "dynamic")


def guidance_weights(
  kind: str,
  steps: int,
  *,
  w: float = 1.0,
  high: float = 15.0,
  low: float = 1.0,
  warmup_fraction: float = 0.5,
) -> Array:
  """Per-step guidance weights [steps]; index 0 is the first (noisiest) step.

  'constant': w at every step. 'oscillating' (Sec. 2.6.2): `high` for the first
  round(warmup_fraction * steps) steps, then alternating low, high, low, ...

  Args:
    kind: 'constant' | 'oscillating'.
    steps: number of sampling steps, >= 1.
    w: constant weight.
    high: oscillation's high weight (the paper uses 15).
    low: oscillation's low weight (the paper uses 1).
    warmup_fraction: fraction of initial steps held at `high`, in [0, 1].

  Returns:
    float32 [steps].
  """
  if not isinstance(steps, int) or steps < 1:
    raise ValueError(f"steps={steps!r} must be an integer >= 1.")
  if kind == "constant":
    return jnp.full((steps,), w, jnp.float32)
  if kind != "oscillating":
    raise ValueError(f"Unknown guidance kind {kind!r}; expected one of {WEIGHT_KINDS}.")
  if not 0.0 <= warmup_fraction <= 1.0:
    raise ValueError(f"warmup_fraction={warmup_fraction} must lie in [0, 1].")
  i = jnp.arange(steps)
  warmup = round(warmup_fraction * steps)
  after = jnp.where((i - warmup) % 2 == 0, low, high)
  return jnp.where(i < warmup, high, after).astype(jnp.float32)


def _check_thresholding(method: str, percentile: float) -> None:
  if method not in THRESHOLDING:
    raise ValueError(
      f"Unknown thresholding {method!r}; expected one of {THRESHOLDING}."
    )
  if method == "dynamic" and not 0.0 < percentile <= 100.0:
    raise ValueError(f"percentile={percentile} must lie in (0, 100].")


def threshold(x_hat: Array, method: str = "none", percentile: float = 99.5) -> Array:
  """Thresholds a prediction x_hat [B, ...] of data in [-1, 1].

  'none': unchanged. 'static': clip to [-1, 1]. 'dynamic' (Saharia et al., 2022):
  s = max(percentile_p(|x_hat|), 1) per example, x_hat <- clip(x_hat, -s, s) / s.
  """
  _check_thresholding(method, percentile)
  if method == "none":
    return x_hat
  if method == "static":
    return jnp.clip(x_hat, -1.0, 1.0)
  flat = jnp.abs(x_hat).reshape(x_hat.shape[0], -1)
  s = jnp.maximum(jnp.percentile(flat, percentile, axis=-1), 1.0)  # [B].
  s = schedules.expand_to(s, x_hat)
  return jnp.clip(x_hat, -s, s) / s


def guide(
  model_fn: Callable[[Array, Array, Array], tuple[Array, Array]],
  weights: Array,
  *,
  parameterization: str = "v",
  space: str = "x",
  thresholding: str = "none",
  percentile: float = 99.5,
) -> Callable[[Array, Array, Array], Array]:
  """Wraps a (conditional, unconditional) model into a guided denoise function.

  Args:
    model_fn: (z [B, ...], logsnr [B], step) -> (cond_out, uncond_out), both in
      `parameterization` space.
    weights: guidance weights [steps] (see guidance_weights), indexed by step.
    parameterization: the model's output space, 'v' | 'eps' | 'x'.
    space: where eq. 5 is applied, 'x' | 'v' | 'eps'.
    thresholding: 'none' | 'static' | 'dynamic', applied to x~ at every step.
    percentile: p of dynamic thresholding, in (0, 100].

  Returns:
    denoise_fn(z, logsnr, step) -> guided output in `parameterization` space,
    as the samplers expect.
  """
  param_lib.check_parameterization(parameterization)
  if space not in param_lib.PARAMETERIZATIONS:
    raise ValueError(
      f"Unknown guidance space {space!r}; expected one of {param_lib.PARAMETERIZATIONS}."
    )
  _check_thresholding(thresholding, percentile)
  component = {"x": 0, "eps": 1, "v": 2}[space]  # Order of to_x_eps_v's outputs.

  def denoise_fn(z: Array, logsnr: Array, step: Array) -> Array:
    cond_out, uncond_out = model_fn(z, logsnr, step)
    cond = param_lib.to_x_eps_v(cond_out, z, logsnr, parameterization)[component]
    uncond = param_lib.to_x_eps_v(uncond_out, z, logsnr, parameterization)[component]
    w = weights[step]
    guided = (1.0 + w) * cond - w * uncond  # eq. 5.
    x_hat, eps_hat, _ = param_lib.to_x_eps_v(guided, z, logsnr, space)
    if thresholding != "none":
      x_hat = threshold(x_hat, thresholding, percentile)
      eps_hat = param_lib.eps_from_x(z, x_hat, logsnr)  # Keep eps consistent.
    return param_lib.from_x_eps(x_hat, eps_hat, logsnr, parameterization)

  return denoise_fn
