"""Targets of guided progressive distillation (paper Sec. 2.7), as pure functions.

Imagen Video distils each guided stage in two phases (Meng et al., 2022):
  phase 1 (guidance distillation): a student that takes the guidance weight w
    as an input learns to match the teacher's guided prediction
    x~ = (1 + w) x_hat_c - w x_hat_u (eq. 5) in a single pass, for
    w ~ U[w_min, w_max] and t ~ U[0, 1];
  phase 2 (halving): progressive distillation (Salimans & Ho, 2022, Algorithm
    2): on the student's grid of N sampling steps, one student DDIM step must
    land where two teacher DDIM steps of half the size land; then N -> N / 2
    and repeat.
Times follow the samplers' uniform grid (t_i = 1 - i / N); logSNRs come from
the stage's schedule. Arrays are [B, ...]; logsnr is [B].
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from imagen_video_jax.diffusion import schedules

Array = jax.Array


def guided_x(x_cond: Array, x_uncond: Array, w: Array) -> Array:
  """The guided prediction x~ = (1 + w) x_c - w x_u (eq. 5), w [B]."""
  w = schedules.expand_to(w, x_cond)
  return (1.0 + w) * x_cond - w * x_uncond


def halving_steps(start: int, final: int) -> list[int]:
  """Student step counts of the halving rounds: start/2, start/4, ..., final.

  Raises:
    ValueError: unless start = final * 2^k with k >= 0 (no halving path).
  """
  if final < 1 or start < final:
    raise ValueError(
      f"distill.start_sampling_steps={start} and final_sampling_steps={final}:"
      " need start_sampling_steps >= final_sampling_steps >= 1."
    )
  steps, n = [], start
  while n > final:
    if n % 2:
      break
    n //= 2
    steps.append(n)
  if n != final:
    raise ValueError(
      f"distill.start_sampling_steps={start} does not halve to"
      f" final_sampling_steps={final}: start_sampling_steps must be"
      f" final_sampling_steps * 2^k (e.g. {final * 2**5})."
    )
  return steps


def student_logsnrs(
  rng: Array, batch: int, steps: Array, logsnr_fn: Callable[[Array], Array]
) -> tuple[Array, Array, Array, Array]:
  """A random student step of an N-step grid and its two teacher half-steps.

  Algorithm 2 of Salimans & Ho (2022): i ~ U{1, ..., N}, t = i / N,
  t' = t - 0.5 / N, t'' = t - 1 / N.

  Args:
    rng: PRNG key.
    batch: B.
    steps: the student's step count N (an int32 scalar, may be traced).
    logsnr_fn: the stage's schedule t -> lambda(t).

  Returns:
    (lambda_t, lambda_t', lambda_t'', last), each [B]: decreasing noise, and
    whether the step is the grid's last (i = 1, t'' = 0).
  """
  n = jnp.asarray(steps, jnp.float32)
  i = jax.random.randint(rng, (batch,), 1, jnp.asarray(steps, jnp.int32) + 1)
  t = i.astype(jnp.float32) / n
  return logsnr_fn(t), logsnr_fn(t - 0.5 / n), logsnr_fn(t - 1.0 / n), i == 1


def ddim_step(x_hat: Array, z_t: Array, logsnr_t: Array, logsnr_s: Array) -> Array:
  """Deterministic DDIM step z_t -> z_s = alpha_s x_hat + sigma_s eps_hat.

  eps_hat = (z_t - alpha_t x_hat) / sigma_t (Song et al., 2021; Salimans & Ho,
  2022, Algorithm 2). logsnr_t, logsnr_s [B] with lambda_s > lambda_t.
  """
  a_t, s_t = schedules.alpha_sigma(schedules.expand_to(logsnr_t, z_t))
  a_s, s_s = schedules.alpha_sigma(schedules.expand_to(logsnr_s, z_t))
  return a_s * x_hat + (s_s / s_t) * (z_t - a_t * x_hat)


def two_step_target(
  teacher_x: Callable[[Array, Array], Array],
  z_t: Array,
  logsnr_t: Array,
  logsnr_mid: Array,
  logsnr_s: Array,
  last: Array | None = None,
) -> Array:
  """The x a student's one DDIM step t -> t'' must predict to match two teacher steps.

  The teacher steps z_t -> z_t' -> z_t'' by DDIM; the target is the x~ whose DDIM
  step from z_t lands on z_t'' (Salimans & Ho, 2022, Algorithm 2):
    x~ = (z_t'' - (sigma_t'' / sigma_t) z_t) / (alpha_t'' - (sigma_t'' / sigma_t) alpha_t).
  At the grid's last step (t'' = 0) the samplers return x_hat rather than a
  DDIM step to lambda(0) (samplers.py), and so does the teacher's second step:
  the target there is that x_hat, teacher_x(z_t', lambda_t'), as in the
  reference implementation (google-research diffusion_distillation, dpm.py).
  Without it, a finite logsnr_max leaves part of the teacher's noisier first
  estimate in the target (8-22% of it at lambda(0) = 8 for 8- to 32-step
  students).

  Args:
    teacher_x: (z [B, ...], logsnr [B]) -> the teacher's x_hat (guided and
      thresholded as the caller wants), shaped like z.
    z_t: the noisy input [B, ...].
    logsnr_t, logsnr_mid, logsnr_s: lambda_t < lambda_t' < lambda_t'', [B].
    last: [B] bool, the examples whose t'' is 0 (None: none is).

  Returns:
    x~ shaped like z_t (no gradient flows through it).
  """
  z_mid = ddim_step(teacher_x(z_t, logsnr_t), z_t, logsnr_t, logsnr_mid)
  x_mid = teacher_x(z_mid, logsnr_mid)
  z_s = ddim_step(x_mid, z_mid, logsnr_mid, logsnr_s)
  a_t, s_t = schedules.alpha_sigma(schedules.expand_to(logsnr_t, z_t))
  a_s, s_s = schedules.alpha_sigma(schedules.expand_to(logsnr_s, z_t))
  ratio = s_s / s_t
  target = (z_s - ratio * z_t) / (a_s - ratio * a_t)
  if last is not None:
    target = jnp.where(schedules.expand_to(last, target), x_mid, target)
  return jax.lax.stop_gradient(target)
