"""Samplers over a uniform time grid, each one `lax.fori_loop` (Sec. 2.1, 2.7).

The grid is t_i = 1 - i / N, i = 0..N, with lambda_i = logsnr_fn(t_i); step i goes
from t_i to t_{i+1} with one call denoise_fn(z, lambda_i [B], i). Samplers:
  'ancestral': z_s ~ N(mu~_{s|t}(z_t, x_hat), exp((1 - gamma) log sigma~^2_{s|t}
               + gamma log sigma^2_{t|s}))                          (eq. 3-4)
               gamma = 0 uses the posterior variance, gamma = 1 the forward one
               (Nichol & Dhariwal, 2021).
  'ddim':      z_s = alpha_s x_hat + sigma_s eps_hat (Song et al., 2021).
  'distilled': the stochastic N-step sampler of Meng et al. (2022): a deterministic
               DDIM step from t_i to t_{i+2} (twice the step), then a step back to
               t_{i+1} along the forward process q(z_{t_{i+1}} | z_{t_{i+2}}).
Every sampler returns the last step's prediction x_hat (at t_{N-1}), which is the
deterministic final step (a DDIM step to lambda = infinity).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from imagen_video_jax.diffusion import parameterizations as param_lib
from imagen_video_jax.diffusion import schedules

Array = jax.Array
SAMPLERS = ("ancestral", "ddim", "distilled")


def _ancestral(z, x_hat, eps_hat, lt, ls, lss, noise, gamma):
  """eq. 3-4: posterior mean plus noise of log-interpolated variance."""
  del eps_hat, lss
  mean, _ = schedules.q_posterior(z, x_hat, lt, ls)
  log_var = (1.0 - gamma) * schedules.log_var_posterior(lt, ls) + (
    gamma * schedules.log_var_t_given_s(lt, ls)
  )  # eq. 4: (sigma~^2_{s|t})^{1-gamma} (sigma^2_{t|s})^gamma.
  return mean + jnp.exp(0.5 * log_var) * noise


def _ddim(z, x_hat, eps_hat, lt, ls, lss, noise, gamma):
  """Deterministic DDIM: z_s = alpha_s x_hat + sigma_s eps_hat."""
  del z, lt, lss, noise, gamma
  return schedules.diffuse(x_hat, ls, eps_hat)


def _distilled(z, x_hat, eps_hat, lt, ls, lss, noise, gamma):
  """Meng et al. (2022): DDIM to s' = t_{i+2}, then q(z_s | z_{s'}) back to s."""
  del z, lt, gamma
  z_ss = schedules.diffuse(x_hat, lss, eps_hat)  # DDIM step of twice the size.
  alpha_sss, var_sss = schedules.q_t_given_s(ls, lss)  # eq. 1 with t=s, s=s'.
  return alpha_sss * z_ss + jnp.sqrt(var_sss) * noise


_UPDATES = {"ancestral": _ancestral, "ddim": _ddim, "distilled": _distilled}


def sample(
  denoise_fn: Callable[[Array, Array, Array], Array],
  rng: Array,
  shape: tuple[int, ...],
  *,
  sampler: str = "ancestral",
  steps: int = 256,
  gamma: float = 0.3,
  logsnr_fn: Callable[[Array], Array],
  parameterization: str = "v",
) -> Array:
  """Draws samples by iterating the chosen sampler from pure noise.

  Jit the caller (static sampler, steps, shape, parameterization): the loop is a
  single lax.fori_loop whatever the number of steps.

  Args:
    denoise_fn: (z [B, ...], logsnr [B], step int32 scalar) -> output shaped like z
      in `parameterization` space (wrap with guidance.guide for guidance).
    rng: PRNG key.
    shape: output shape [B, ...].
    sampler: 'ancestral' | 'ddim' | 'distilled'.
    steps: number of denoise_fn calls N >= 1.
    gamma: ancestral variance interpolation in [0, 1].
    logsnr_fn: schedule t -> lambda(t), decreasing, e.g. schedules.get_logsnr_fn.
    parameterization: 'v' | 'eps' | 'x'.

  Returns:
    x [shape], float32.
  """
  if sampler not in SAMPLERS:
    raise ValueError(f"Unknown sampler {sampler!r}; expected one of {SAMPLERS}.")
  if not isinstance(steps, int) or steps < 1:
    raise ValueError(f"steps={steps!r} must be an integer >= 1.")
  if not 0.0 <= gamma <= 1.0:
    raise ValueError(f"gamma={gamma} must lie in [0, 1].")
  param_lib.check_parameterization(parameterization)
  update = _UPDATES[sampler]
  logsnrs = logsnr_fn(jnp.linspace(1.0, 0.0, steps + 1))  # lambda_i at t_i.
  batch = shape[0]
  init_rng, loop_rng = jax.random.split(rng)

  def body(i, carry):
    z, _ = carry
    lt, ls = logsnrs[i], logsnrs[i + 1]
    lss = logsnrs[jnp.minimum(i + 2, steps)]
    output = denoise_fn(z, jnp.full((batch,), lt), i)
    x_hat, eps_hat, _ = param_lib.to_x_eps_v(output, z, lt, parameterization)
    noise = jax.random.normal(jax.random.fold_in(loop_rng, i), shape)
    z_s = update(z, x_hat, eps_hat, lt, ls, lss, noise, gamma)
    return z_s, x_hat

  z = jax.random.normal(init_rng, shape)  # z_1 ~ N(0, I) approximates q(z_1).
  _, x = jax.lax.fori_loop(0, steps, body, (z, jnp.zeros(shape)))
  return x
