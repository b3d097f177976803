"""Tests of the video writers and reader (mp4 via ffmpeg, gif, png, npy)."""

import os

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
  bad = tmp_path / "bad.mp4"
  bad.write_bytes(b"not a video")
  with pytest.raises(ValueError, match="bad.mp4"):
    video_io.read_video(str(bad))
