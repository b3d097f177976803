"""Continuous-time diffusion core: pure jax.numpy functions, no Flax (Sec. 2.1)."""

from imagen_video_jax.diffusion.guidance import guidance_weights, guide, threshold
from imagen_video_jax.diffusion.losses import diffusion_loss, sample_t
from imagen_video_jax.diffusion.parameterizations import from_x_eps, target, to_x_eps_v
from imagen_video_jax.diffusion.samplers import sample
from imagen_video_jax.diffusion.schedules import (
  alpha_sigma,
  cosine_logsnr,
  cosine_t,
  diffuse,
  get_logsnr_fn,
  q_posterior,
  q_t_given_s,
)

__all__ = [
  "alpha_sigma",
  "cosine_logsnr",
  "cosine_t",
  "diffuse",
  "diffusion_loss",
  "from_x_eps",
  "get_logsnr_fn",
  "guidance_weights",
  "guide",
  "q_posterior",
  "q_t_given_s",
  "sample",
  "sample_t",
  "target",
  "threshold",
  "to_x_eps_v",
]
