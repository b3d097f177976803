"""Benchmarks: `python -m imagen_video_jax.benchmarks.NAME`."""
