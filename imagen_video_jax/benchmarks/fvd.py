"""Seconds per clip of FVD's I3D features: plain 3-D convolutions vs `fvd.i3d_features`.

`metrics/fvd.py` runs I3D's 3-D convolutions as 2-D ones on CPU
(`conv3d_as_2d`). This times both on the same random uint8 clips, batched and
split over the local devices as `evaluate` does, alternating the two `--repeats`
times after a warm-up, and prints the largest logit difference.

  python -m imagen_video_jax.benchmarks.fvd
  python -m imagen_video_jax.benchmarks.fvd --clips=32 --frames=16 --size=32
"""

import functools
import time

import jax
import numpy as np
from absl import app, flags

from imagen_video_jax.metrics import frechet, fvd

_CLIPS = flags.DEFINE_integer("clips", 16, "Clips per timed pass.")
_FRAMES = flags.DEFINE_integer("frames", 16, "Frames per clip (before I3D's 16).")
_SIZE = flags.DEFINE_integer("size", 32, "Clip height and width (before 224x224).")
_BATCH = flags.DEFINE_integer("batch", 8, "Clips per call.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed passes of each.")


def main(argv: list[str]) -> None:
  del argv
  shape = (_CLIPS.value, _FRAMES.value, _SIZE.value, _SIZE.value, 3)
  clips = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
  variables = fvd.i3d_variables()
  paths = {
    "3-D convolutions": lambda x: frechet.map_batches(
      functools.partial(fvd.i3d_logits, conv_as_2d=False), variables, x, _BATCH.value
    ),
    "fvd.i3d_features": lambda x: fvd.i3d_features(x, _BATCH.value),
  }
  logits = {name: f(clips) for name, f in paths.items()}  # Compiles.
  seconds = {name: [] for name in paths}
  for _ in range(_REPEATS.value):
    for name, f in paths.items():
      start = time.perf_counter()
      f(clips)
      seconds[name].append((time.perf_counter() - start) / len(clips))
  print(f"{jax.device_count()} {jax.default_backend()} devices, clips {shape}")
  print(f"{'path':<20} {'s/clip (each pass)':>24}")
  for name, s in seconds.items():
    print(f"{name:<20} {' '.join(f'{x:.3f}' for x in s):>24}")
  a, b = logits.values()
  print(
    f"max |logit difference| {np.abs(a - b).max():.2e} (max |logit| {np.abs(a).max():.1f})"
  )


if __name__ == "__main__":
  app.run(main)
