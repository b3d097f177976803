r"""Examples per second of the input pipeline, per stage.

  python -m imagen_video_jax.benchmarks.input_pipeline [--batches=4]

Builds, in a temporary directory, a small bouncing_digits (videos + images)
and a video_text_folder of ffmpeg `testsrc` clips (128 frames, 24 fps,
192x320), then times `input_pipeline.create_iterator` for the demo stages
(base, tsr1, ssr1 on bouncing digits) and for paper-size clips: ssr1 paper
(32x48x80 at 6 fps, conditioning 32x24x40) and tsr3 paper (128x192x320 at 24
fps, conditioning 64x192x320 at 12 fps). The rate includes decoding, frame
skipping, resizing, tokenizing and the transfer to devices; the first batch
(pipeline start-up) is not timed.
"""

import os
import subprocess
import tempfile
import time

import imageio_ffmpeg
import jax
import ml_collections
from absl import app, flags

from imagen_video_jax import config_utils, data_build, input_pipeline, sharding

_BATCHES = flags.DEFINE_integer("batches", 4, "Timed batches per stage.")
_WORKERS = flags.DEFINE_integer("worker_count", 0, "grain worker processes.")
_PREFETCH = flags.DEFINE_integer("prefetch", 2, "Prefetch threads/buffer.")

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_CLIPS = {"name": "clips128", "frames": 128, "fps": 24, "resolution": [192, 320]}
# (label, config, mixture, batch size).
_RUNS = (
  ("demo base 8x16x16 @4", "base.py:demo", None, 16),
  ("demo tsr1 16x16x16 @8", "tsr1.py:demo", None, 16),
  ("demo ssr1 16x32x32 @8", "ssr1.py:demo", None, 16),
  ("paper ssr1 32x48x80 @6", "ssr1.py:paper", "video_text_folder/clips128", 8),
  ("paper tsr3 128x192x320 @24", "tsr3.py:paper", "video_text_folder/clips128", 2),
)


def make_videos(folder: str, count: int = 3, seconds: float = 6.0) -> None:
  """Writes `count` ffmpeg testsrc mp4s (24 fps, 320x192) with .txt captions."""
  ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
  os.makedirs(folder)
  for i in range(count):
    path = os.path.join(folder, f"testsrc{i}.mp4")
    src = f"testsrc=duration={seconds}:size=320x192:rate=24"
    subprocess.run(
      [
        ffmpeg,
        "-loglevel",
        "error",
        "-f",
        "lavfi",
        "-i",
        src,
        "-pix_fmt",
        "yuv420p",
        path,
      ],
      check=True,
    )
    with open(os.path.join(folder, f"testsrc{i}.txt"), "w") as f:
      f.write(f"a test pattern number {i}")


def examples_per_second(config: ml_collections.ConfigDict, mesh, batches: int) -> float:
  """Times `batches` batches after the first; returns examples/s."""
  it = input_pipeline.create_iterator(config, mesh=mesh)
  jax.block_until_ready(next(it))
  start = time.perf_counter()
  for _ in range(batches):
    jax.block_until_ready(next(it))
  return batches * config.batch_size / (time.perf_counter() - start)


def main(argv: list[str]) -> None:
  del argv
  mesh = sharding.make_mesh((-1, 1, 1))  # The configs' rules name data and fsdp.
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = os.path.join(tmp, "tfds")
    start = time.perf_counter()
    for kind in ("videos", "images"):
      data_build.build_dataset(
        "bouncing_digits", data_dir, config=kind, train_size=64, test_size=4
      )
    make_videos(os.path.join(tmp, "videos"))
    data_build.build_dataset(
      "video_text_folder",
      data_dir,
      config=_CLIPS,
      manual_dir=os.path.join(tmp, "videos"),
    )
    print(f"built datasets in {time.perf_counter() - start:.1f} s")
    print(
      f"{jax.device_count()} devices, {os.cpu_count()} CPUs, workers={_WORKERS.value}"
    )
    for label, spec, mixture, batch in _RUNS:
      config = config_utils.load_config(os.path.join(_ROOT, "configs", spec))
      config.data.data_dir = data_dir
      config.data.worker_count = _WORKERS.value
      config.data.prefetch = _PREFETCH.value
      config.batch_size = batch
      if mixture:
        config.data.mixture = ml_collections.ConfigDict({mixture: 1.0})
      rate = examples_per_second(config, mesh, _BATCHES.value)
      print(f"{label:30s} batch {batch:3d}: {rate:8.1f} examples/s")


if __name__ == "__main__":
  app.run(main)
