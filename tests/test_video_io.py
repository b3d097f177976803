"""Tests of the video writers and reader (mp4 via ffmpeg, gif, png, npy)."""

import os
import subprocess
import tracemalloc

import imageio_ffmpeg
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from imagen_video_jax import video_io


def _smooth_video(t=6, h=24, w=40):
  """A smooth colour ramp that moves over time (compresses well, decodes close)."""
  yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
  frames = []
  for i in range(t):
    frames.append(np.stack([xx, yy, np.full_like(xx, i / t)], -1))
  return (np.stack(frames) * 255).round().astype(np.uint8)


def test_to_uint8_maps_range_and_clips():
  x = np.array([-2.0, -1.0, 0.0, 1.0, 3.0])
  np.testing.assert_array_equal(video_io.to_uint8(x), [0, 0, 128, 255, 255])


def test_mp4_roundtrip(tmp_path):
  video = _smooth_video()
  path = str(tmp_path / "v.mp4")
  video_io.write_mp4(path, video, fps=6)
  decoded, fps = video_io.read_video(path)
  assert decoded.shape == video.shape
  assert fps == pytest.approx(6)
  # Lossy H.264 + yuv420p: close, not exact.
  assert np.abs(decoded.astype(float) - video).mean() < 4
  assert [f for f in os.listdir(tmp_path)] == ["v.mp4"]  # No temporary left.


def test_mp4_odd_size_is_padded(tmp_path):
  video = _smooth_video(t=3, h=9, w=7)
  path = str(tmp_path / "odd.mp4")
  video_io.write_mp4(path, video, fps=3)
  decoded, _ = video_io.read_video(path)
  assert decoded.shape == (3, 10, 8, 3)


def test_gif_roundtrip(tmp_path):
  video = _smooth_video(t=4)
  path = str(tmp_path / "v.gif")
  video_io.write_gif(path, video, fps=4)
  with Image.open(path) as im:
    assert im.n_frames == 4
    assert im.info["duration"] == 250
    frames = []
    for i in range(4):
      im.seek(i)
      frames.append(np.asarray(im.convert("RGB")))
  assert np.abs(np.stack(frames).astype(float) - video).mean() < 8


def test_contact_sheet_layout():
  video = np.zeros((10, 4, 5, 3), np.uint8)
  video[7] = 77
  sheet = video_io.contact_sheet(video, columns=4, pad=1)
  assert sheet.shape == (3 * 5 + 1, 4 * 6 + 1, 3)
  # Frame 7 is row 1, column 3.
  np.testing.assert_array_equal(sheet[1 + 5 : 1 + 5 + 4, 1 + 18 : 1 + 18 + 5], 77)
  assert sheet[0, 0, 0] == 255  # Border is white.


def test_write_sample_writes_every_kind(tmp_path):
  video = _smooth_video(t=2, h=8, w=8)
  files = video_io.write_sample(str(tmp_path), 3, video, 2.0, save_npy=True)
  assert files == {
    "mp4": "0003.mp4",
    "gif": "0003.gif",
    "png": "0003.png",
    "npy": "0003.npy",
  }
  np.testing.assert_array_equal(np.load(tmp_path / "0003.npy"), video)
  with Image.open(tmp_path / "0003.png") as im:
    assert im.size == (2 * 10 + 2, 10 + 2)
  assert sorted(os.listdir(tmp_path)) == sorted(files.values())


def test_bad_inputs(tmp_path):
  with pytest.raises(ValueError, match="uint8"):
    video_io.write_mp4(str(tmp_path / "x.mp4"), np.zeros((2, 4, 4, 3)), 1)
  with pytest.raises(ValueError, match="nope.mp4"):
    video_io.read_video(str(tmp_path / "nope.mp4"))


def _ffmpeg_testsrc(path, frames, size="192x144", *args):
  """Encodes ffmpeg's testsrc2 (every frame differs: a moving pattern)."""
  cmd = [
    imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error",
    "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30",
    "-frames:v", str(frames), "-pix_fmt", "yuv420p", *args, str(path),
  ]  # fmt: skip
  subprocess.run(cmd, check=True, capture_output=True)


def test_undecodable_videos_name_the_file_and_the_cause(tmp_path):
  """ffmpeg's reason, not its build banner, in one short line."""
  truncated = tmp_path / "truncated.mp4"
  _ffmpeg_testsrc(truncated, 30)  # Not faststart: the index (moov) is last.
  truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
  text = tmp_path / "notes.mp4"
  text.write_text("shopping list\n")
  for path, cause in (
    (truncated, "moov atom not found"),
    (text, "Invalid data found when processing input"),
  ):
    for read in (video_io.read_video, lambda p: video_io.read_frames(p, 2, 8, 8)):
      with pytest.raises(ValueError) as e:
        read(str(path))
      message = str(e.value)
      assert str(path) in message and cause in message
      assert "\n" not in message and len(message) < 300, message
      assert "ffmpeg version" not in message and "configuration:" not in message


def test_probe_video(tmp_path):
  path = tmp_path / "v.mp4"
  _ffmpeg_testsrc(path, 45, "64x48")
  assert video_io.probe_video(str(path)) == video_io.VideoInfo(45, 48, 64, 30.0)


@pytest.mark.parametrize("height, width", [(18, 24), (8, 8), (288, 384)])
def test_read_frames_is_a_full_decode_then_resize(tmp_path, height, width):
  """ffmpeg picks the evenly spaced frames and resizes them; the result is
  what decoding all frames, taking frames (i * T) // N and resizing them with
  jax's antialiased bilinear resize gives, to within swscale's rounding and
  filter length (mean < 3 levels of 255; 8x8 is a 24x shrink)."""
  path = str(tmp_path / "long.mp4")
  _ffmpeg_testsrc(path, 300)
  n = 5
  got = video_io.read_frames(path, n, height, width)
  assert got.shape == (n, height, width, 3) and got.dtype == np.uint8
  assert got.flags.writeable  # Read into an array of its own, no copy.
  full, _ = video_io.read_video(path)
  picked = full[(np.arange(n) * len(full)) // n]  # Frames 0, 60, 120, 180, 240.
  want = jax.image.resize(
    jnp.asarray(picked, jnp.float32), got.shape, "bilinear", antialias=True
  )
  diff = np.abs(got - np.clip(np.round(np.asarray(want)), 0, 255))
  assert diff.mean() < 3, diff.mean()
  # The neighbouring frames are further away than that: the frames are right.
  nearby = jax.image.resize(
    jnp.asarray(full[(np.arange(n) * len(full)) // n + 1], jnp.float32),
    got.shape,
    "bilinear",
    antialias=True,
  )
  assert np.abs(got - np.asarray(nearby)).mean() > diff.mean() + 1


def test_read_frames_memory_is_bounded_by_the_result(tmp_path):
  """A long video is never held whole: Python's peak allocation while reading
  2 small frames is far below the decoded video's 25 MB."""
  path = str(tmp_path / "long.mp4")
  _ffmpeg_testsrc(path, 300)
  full_bytes = 300 * 144 * 192 * 3
  tracemalloc.start()
  try:
    frames = video_io.read_frames(path, 2, 8, 8)
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  assert frames.shape == (2, 8, 8, 3)
  assert peak < full_bytes / 50, peak


def test_read_frames_needs_enough_frames(tmp_path):
  path = str(tmp_path / "short.mp4")
  _ffmpeg_testsrc(path, 6, "16x16")
  assert video_io.read_frames(path, 6, 4, 4).shape == (6, 4, 4, 3)
  with pytest.raises(ValueError, match="short.mp4' has 6 frames; need 7"):
    video_io.read_frames(path, 7, 4, 4)
