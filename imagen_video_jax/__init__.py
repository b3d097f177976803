"""imagen-video-jax: Imagen Video (Ho et al., 2022, arXiv 2210.02303) in JAX/Flax."""
