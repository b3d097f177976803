"""Tests of the video_text_folder and image_text_folder TFDS builders."""

import json
import shutil
import subprocess

import imageio_ffmpeg
import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

from imagen_video_jax import data_build, folder_data

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
CLIP = {"name": "clips4", "frames": 4, "fps": 8, "resolution": [16, 16], "stride": 3}


def ffmpeg(*args, stdin=None):
  subprocess.run([FFMPEG, "-v", "error", "-y", *args], input=stdin, check=True)


def make_testsrc(path, seconds, rate, *codec):
  ffmpeg("-f", "lavfi", "-i", f"testsrc=duration={seconds}:size=96x64:rate={rate}",
         *codec, str(path))  # fmt: skip


def halves(h, w, green=0):
  """uint8 [h, w, 3]: left half red, right half blue, green channel `green`."""
  img = np.zeros((h, w, 3), np.uint8)
  img[:, : w // 2, 0] = 255
  img[:, w // 2 :, 2] = 255
  img[..., 1] = green
  return img


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("videos")
  # 32 lossless frames at 16 fps whose green channel counts frames: 8 * k.
  ramp = np.stack([halves(48, 96, 8 * k) for k in range(32)])
  ffmpeg("-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "96x48", "-r", "16",
         "-i", "pipe:0", "-c:v", "ffv1", "-pix_fmt", "bgr0", str(root / "ramp.mkv"),
         stdin=ramp.tobytes())  # fmt: skip
  make_testsrc(root / "clip.mp4", 3, 25, "-c:v", "libx264", "-pix_fmt", "yuv420p")
  make_testsrc(root / "anim.gif", 1, 10)
  (root / "sub").mkdir()
  make_testsrc(
    root / "sub" / "clip.webm", 1.5, 30, "-c:v", "libvpx", "-deadline", "realtime"
  )
  make_testsrc(root / "tiny.avi", 0.25, 8, "-c:v", "mpeg4")
  data = (root / "clip.mp4").read_bytes()
  (root / "broken.mp4").write_bytes(data[: len(data) // 3])
  shutil.copy(root / "clip.mp4", root / "nocap.mp4")
  (root / "notes.md").write_text("not a video")
  (root / "clip.txt").write_text("a test pattern\n")
  (root / "sub" / "clip.txt").write_text("a webm test pattern")
  (root / "tiny.txt").write_text("too short")
  lines = [
    {"file": "ramp.mkv", "caption": "a ramp"},
    {"file": "anim.gif", "caption": "a gif"},
    {"file": "broken.mp4", "caption": "a truncated file"},
  ]
  text = "\n".join(json.dumps(x) for x in lines) + "\n{not json\n"
  (root / "captions.jsonl").write_text(text)
  return root


@pytest.fixture(scope="module")
def video_builder(video_folder, tmp_path_factory):
  return data_build.build_dataset(
    "video_text_folder",
    tmp_path_factory.mktemp("tfds"),
    config=CLIP,
    manual_dir=video_folder,
  )


def test_video_clips_per_file_and_skips(video_builder):
  # Frames at 8 fps: ramp 2 s -> 16, clip 3 s -> 24, gif 1 s -> 8,
  # webm 1.5 s -> 12; clips of 4 start every 3 frames.
  expected = {"ramp.mkv": 5, "clip.mp4": 7, "anim.gif": 2, "sub/clip.webm": 3}
  source = video_builder.as_data_source("train")
  files = [ex["file"].decode() for ex in source]
  assert {f: files.count(f) for f in set(files)} == expected
  skipped = {"too_short": 1, "undecodable": 1, "missing_caption": 1}
  skipped["bad_caption_line"] = 1
  assert video_builder.info.metadata["skipped"] == {"train": skipped}
  listed = sorted(video_builder.info.metadata["skipped_files"]["train"])
  assert listed[:3] == [
    "broken.mp4: undecodable",
    "captions.jsonl:4: bad_caption_line",
    "nocap.mp4: missing_caption",
  ]
  # The counts are saved with the dataset.
  reread = tfds.builder_from_directory(video_builder.data_path)
  assert reread.info.metadata["skipped"] == {"train": skipped}


def test_video_clip_content_fps_stride_and_crop(video_builder):
  captions = {"ramp.mkv": "a ramp", "clip.mp4": "a test pattern"}
  captions |= {"anim.gif": "a gif", "sub/clip.webm": "a webm test pattern"}
  starts = []
  for ex in video_builder.as_data_source("train"):
    file = ex["file"].decode()
    assert ex["caption"].decode() == captions[file]
    video = np.asarray(ex["video"])
    assert video.shape == (4, 16, 16, 3) and video.dtype == np.uint8
    if file != "ramp.mkv":
      continue
    start = int(ex["start_frame"])
    starts.append(start)
    # 16 fps -> 8 fps keeps every other source frame: green = 8 * 2 * frame.
    green = video[..., 1].astype(int)
    expected = 16 * (start + np.arange(4))[:, None, None]
    assert np.abs(green - expected).max() <= 1
    # 48x96 scaled to cover 16x16 is 16x32; the centre crop keeps columns
    # 8..23 of it: red on the left, blue on the right.
    assert (video[:, :, :7, 0] >= 250).all() and (video[:, :, 9:, 0] <= 5).all()
    assert (video[:, :, 9:, 2] >= 250).all() and (video[:, :, :7, 2] <= 5).all()
  assert sorted(starts) == [0, 3, 6, 9, 12]


def test_decode_video_limits_frames_and_names_bad_file(video_folder):
  video = folder_data.decode_video(
    video_folder / "clip.mp4", fps=4, resolution=(8, 12), max_frames=5
  )
  assert video.shape == (5, 8, 12, 3)
  with pytest.raises(ValueError, match="broken.mp4"):
    folder_data.decode_video(video_folder / "broken.mp4", fps=4, resolution=(8, 8))


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("images")
  train, test = root / "train", root / "test"
  (train / "sub").mkdir(parents=True)
  test.mkdir()
  PIL.Image.fromarray(halves(40, 80)).save(train / "halves.png")
  PIL.Image.fromarray(np.full((20, 20, 3), (0, 255, 0), np.uint8)).save(train / "g.jpg")
  gradient = np.tile(np.arange(64, dtype=np.uint8)[None, :, None] * 4, (64, 1, 3))
  PIL.Image.fromarray(gradient).save(train / "sub" / "grad.webp", lossless=True)
  PIL.Image.fromarray(np.full((30, 10), 77, np.uint8)).save(test / "gray.png")
  data = (train / "halves.png").read_bytes()
  (train / "broken.png").write_bytes(data[: len(data) // 2])
  PIL.Image.fromarray(gradient).save(train / "nocap.png")
  PIL.Image.fromarray(gradient).save(train / "empty.png")
  (train / "empty.txt").write_text("  \n")
  (train / "g.txt").write_text("green")
  (train / "sub" / "grad.txt").write_text("a gradient")
  (test / "gray.txt").write_text("gray")
  lines = [{"file": "halves.png", "caption": "red and blue"}]
  lines.append({"file": "broken.png", "caption": "broken"})
  lines.append({"file": "gone.png", "caption": "a moved file"})  # Not there.
  (train / "captions.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
  return root


def test_image_folder_resized(image_folder, tmp_path):
  builder = data_build.build_dataset(
    "image_text_folder",
    tmp_path,
    config={"name": "res16", "resolution": [16, 16]},
    manual_dir=image_folder,
  )
  train = {ex["file"].decode(): ex for ex in builder.as_data_source("train")}
  assert sorted(train) == ["g.jpg", "halves.png", "sub/grad.webp"]
  assert [ex["caption"].decode() for ex in builder.as_data_source("test")] == ["gray"]
  assert train["halves.png"]["caption"].decode() == "red and blue"
  img = train["halves.png"]["image"]
  assert img.shape == (16, 16, 3)
  # 40x80 scaled to cover 16x16 is 16x32; the centre crop is columns 8..23.
  assert (img[:, :7, 0] >= 250).all() and (img[:, 9:, 2] >= 250).all()
  assert (img[:, :7, 2] <= 5).all() and (img[:, 9:, 0] <= 5).all()
  assert np.abs(train["g.jpg"]["image"].astype(int) - (0, 255, 0)).max() <= 8
  skipped = {"train": {"undecodable": 1, "missing_caption": 2, "missing_file": 1}}
  assert builder.info.metadata["skipped"] == skipped
  assert (
    "captions.jsonl: gone.png: missing_file"
    in (builder.info.metadata["skipped_files"]["train"])
  )


def test_image_folder_native_size(image_folder, tmp_path):
  builder = data_build.build_dataset(
    "image_text_folder",
    tmp_path,
    config={"name": "native", "resolution": None},
    manual_dir=image_folder,
  )
  (gray,) = list(builder.as_data_source("test"))
  np.testing.assert_array_equal(gray["image"], np.full((30, 10, 3), 77, np.uint8))
  train = {ex["file"].decode(): ex["image"] for ex in builder.as_data_source("train")}
  assert train["halves.png"].shape == (40, 80, 3)
  np.testing.assert_array_equal(
    train["sub/grad.webp"][..., 0], np.tile(np.arange(64) * 4, (64, 1))
  )


def test_bad_configs_and_folder_raise(tmp_path):
  video_cls = data_build.builder_class("video_text_folder")
  image_cls = data_build.builder_class("image_text_folder")
  with pytest.raises(ValueError, match="resolution"):
    video_cls.builder_config_cls(name="x", resolution=(16,))
  with pytest.raises(ValueError, match="frames"):
    video_cls.builder_config_cls(name="x", frames=0)
  with pytest.raises(ValueError, match="stride"):
    video_cls.builder_config_cls(name="x", stride=-1)
  with pytest.raises(ValueError, match="webp"):
    image_cls.builder_config_cls(name="x", encoding_format="webp")
  with pytest.raises(ValueError, match="missing"):
    folder_data.folder_splits(tmp_path / "missing")
