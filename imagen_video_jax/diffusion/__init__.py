"""Continuous-time diffusion core: pure jax.numpy functions, no Flax (Sec. 2.1)."""
