"""Tests of imagen_video_jax/input_pipeline.py on a tiny built bouncing_digits."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import types

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from absl import flags
from test_train import xla_flags

from imagen_video_jax import bouncing_digits, clips, config_utils, sharding, video_io
from imagen_video_jax import input_pipeline as ip

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def data_dir(bouncing_digits_dir):
  return bouncing_digits_dir


def train_size(data_dir: str) -> int:
  """Examples in the tiny build's train split (tests/conftest.py)."""
  return (
    tfds.builder("bouncing_digits/images", data_dir=data_dir)
    .info.splits["train"]
    .num_examples
  )


@pytest.fixture(scope="session")
def mesh():
  return sharding.make_mesh((-1, 1, 1))


def make_config(spec, data_dir, **data):
  config = config_utils.load_config(os.path.join(ROOT, spec))
  config.data.data_dir = data_dir
  if spec.endswith(("tsr1.py:demo", "ssr1.py:demo")):  # Trained on runs; test clips.
    config.stage.crop = config.stage.crop_frames = None
  config.batch_size = 8
  config.data.prefetch = 0
  # The tests below rely on this mixture's batch pattern, not on a demo's tuning.
  mixture = data.pop(
    "mixture", {"bouncing_digits/videos": 0.8, "bouncing_digits/images": 0.2}
  )
  config.data.mixture = ml_collections.ConfigDict(mixture)
  config.data.update(data)
  return config


def source_videos(data_dir, split="train"):
  """The built videos as TFDS decodes them, uint8 [N, 16, 64, 64, 3]."""
  data = tfds.builder("bouncing_digits/videos", data_dir=data_dir).as_data_source(split)
  return np.stack([np.asarray(data[i]["video"]) for i in range(len(data))])


def captions(tokens):
  """Decodes ByteTokenizer ids (id = byte + 3, 0 = pad, 1 = EOS) to strings."""
  return [bytes(int(t) - 3 for t in row if t >= 3).decode() for row in tokens]


def take(it, n):
  return [jax.tree.map(np.asarray, next(it)) for _ in range(n)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


# --- Transforms on synthetic clips (no data needed) ---


def test_resize_is_antialiased():
  # A one-pixel checkerboard averages to mid-grey under a low-pass filter;
  # point sampling would return pure black or white.
  board = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
  frames = np.repeat(board[None, :, :, None], 3, -1)
  small = video_io.resize(frames, 16, 16).astype(float)
  assert small.shape == (1, 16, 16, 3)
  assert np.abs(small[:, 2:-2, 2:-2] - 127.5).max() < 3


def test_resize_of_constant_is_constant_and_identity_is_exact():
  frames = np.full((2, 40, 24, 3), 77, np.uint8)
  np.testing.assert_array_equal(video_io.resize(frames, 10, 6), 77)
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
  np.testing.assert_array_equal(video_io.resize(frames, 8, 8), frames)


def test_frame_step():
  assert clips.frame_step(24, 6, "x") == 4
  assert clips.frame_step(8, 8, "x") == 1
  for bad in (3, 16):  # 8/3 is not an integer; 8/16 < 1.
    with pytest.raises(ValueError, match=f"8 / {bad}"):
      clips.frame_step(8, bad, "stage.fps")


def _numbered_clip(frames=16, size=64):
  """uint8 [T, size, size, 3]: frame t is constant 10 * t (so frames are named)."""
  return np.broadcast_to(
    (10 * np.arange(frames, dtype=np.uint8))[:, None, None, None],
    (frames, size, size, 3),
  ).copy()


def test_frame_skipping_and_conditioning_frames():
  transform = clips.StageTransform(
    stage=config_utils.StageShape(8, 32, 32, 4.0),
    cond=config_utils.StageShape(4, 16, 16, 2.0),
    source=config_utils.StageShape(16, 64, 64, 8.0),
  )
  seen = set()
  for seed in range(20):
    cut = transform.cut(np.random.default_rng(seed))
    idx = cut.frames
    assert idx[0] in (0, 1)  # 8 frames every 2nd span 15 of 16 source frames.
    np.testing.assert_array_equal(np.diff(idx), 2)
    seen.add(int(idx[0]))
    out = transform(_numbered_clip()[idx], cut)
    assert out["video"].shape == (8, 32, 32, 3)
    assert out["cond_video"].shape == (4, 16, 16, 3)
    # Stage frame k is source frame idx[k]; cond frame k is source idx[2k].
    np.testing.assert_array_equal(out["video"][:, 0, 0, 0], 10 * idx)
    np.testing.assert_array_equal(out["cond_video"][:, 0, 0, 0], 10 * idx[::2])
  assert seen == {0, 1}


def test_crop_is_shared_by_frames_and_conditioning():
  rng = np.random.default_rng(0)
  # A clip whose pixels name their (y, x) in the red/green channels.
  yy, xx = np.meshgrid(np.arange(64), np.arange(64), indexing="ij")
  frame = np.stack([yy * 4, xx * 4, np.zeros_like(yy)], -1).astype(np.uint8)
  clip = np.repeat(frame[None], 4, 0)
  transform = clips.StageTransform(
    stage=config_utils.StageShape(4, 64, 64, 8.0, crop=(32, 24)),
    cond=config_utils.StageShape(4, 16, 16, 8.0),
    source=config_utils.StageShape(4, 64, 64, 8.0),
  )
  offsets = set()
  for _ in range(10):
    cut = transform.cut(rng)
    np.testing.assert_array_equal(cut.frames, np.arange(4))
    out = transform(clip, cut)
    video, cond = out["video"], out["cond_video"]
    assert video.shape == (4, 32, 24, 3) and cond.shape == (4, 8, 6, 3)
    np.testing.assert_array_equal(video, video[:1].repeat(4, 0))  # Same crop.
    y, x = video[0, 0, 0, :2].astype(int) // 4
    offsets.add((y, x))
    assert y % 4 == 0 and x % 4 == 0  # On the conditioning's grid.
    full = video_io.resize(clip, 16, 16)[:, y // 4 : y // 4 + 8, x // 4 : x // 4 + 6]
    np.testing.assert_array_equal(cond, full)
  assert len(offsets) > 1


def _run_transform(crop_frames):
  """8 frames at 4 fps conditioned on 4 at 2 fps, trained on runs of crop_frames."""
  return clips.StageTransform(
    stage=config_utils.StageShape(8, 32, 32, 4.0, crop_frames=crop_frames),
    cond=config_utils.StageShape(4, 16, 16, 2.0),
    source=config_utils.StageShape(16, 64, 64, 8.0),
  )


def test_crop_frames_take_a_run_and_its_conditioning_frames():
  transform = _run_transform(4)
  starts = set()
  for seed in range(30):
    rng = np.random.default_rng(seed)
    whole = transform.frame_indices(np.random.default_rng(seed))  # Same start.
    cut = transform.cut(rng)
    idx = cut.frames  # Only these source frames are decoded.
    assert len(idx) == 4
    f = int(np.flatnonzero(whole == idx[0])[0])  # The run's first stage frame.
    starts.add(f)
    np.testing.assert_array_equal(idx, whole[f : f + 4])
    out = transform(_numbered_clip()[idx], cut)
    assert out["video"].shape == (4, 32, 32, 3)
    assert out["cond_video"].shape == (2, 16, 16, 3)
    np.testing.assert_array_equal(out["video"][:, 0, 0, 0], 10 * idx)
    # The conditioning holds the run's input frames: stage frames f and f + 2.
    np.testing.assert_array_equal(out["cond_video"][:, 0, 0, 0], 10 * idx[::2])
  assert starts == {0, 2, 4}  # Runs start on an input frame.
  cut = transform.cut(np.random.default_rng(0), video=False)
  assert cut.frames is None
  image = transform(_numbered_clip(frames=1), cut)
  assert image["video"].shape == (1, 32, 32, 3)  # An image is not cut.


@pytest.mark.parametrize("crop_frames", [3, 10, 0])
def test_crop_frames_must_fit_the_frame_ratio(crop_frames):
  with pytest.raises(ValueError, match=f"stage.crop_frames={crop_frames}"):
    _run_transform(crop_frames)


@pytest.mark.parametrize(
  "stage, cond, source, match",
  [
    (
      config_utils.StageShape(8, 128, 64, 4.0),
      None,
      config_utils.StageShape(16, 64, 64, 8.0),
      "128x64",
    ),
    (
      config_utils.StageShape(16, 64, 64, 4.0),
      None,
      config_utils.StageShape(16, 64, 64, 8.0),
      "16 frames",
    ),
    (
      config_utils.StageShape(8, 64, 64, 3.0),
      None,
      config_utils.StageShape(16, 64, 64, 8.0),
      "8.0 / 3.0",
    ),
    (
      config_utils.StageShape(8, 32, 32, 4.0),
      config_utils.StageShape(8, 16, 16, 2.0),
      config_utils.StageShape(16, 64, 64, 8),
      "8 frames",
    ),
  ],
)
def test_transform_rejects_bad_shapes(stage, cond, source, match):
  with pytest.raises(ValueError, match=match):
    clips.StageTransform(stage=stage, cond=cond, source=source)


# --- The pipeline on the built dataset ---


@pytest.mark.parametrize(
  "spec, cond_shape",
  [
    ("configs/base.py:demo", None),
    ("configs/ssr1.py:demo", (16, 16, 16)),
    ("configs/ssr3.py:demo", (16, 8, 8)),  # Cropped 32x32 of 64x64 -> 8x8 of 16x16.
  ],
)
def test_batch_shapes_values_and_sharding(data_dir, mesh, spec, cond_shape):
  config = make_config(spec, data_dir)
  s = config.stage
  h, w = tuple(s.crop) if s.crop else (s.height, s.width)
  it = ip.create_iterator(config, mesh=mesh)
  specs = {ip.batch_key(spec): spec for spec in it.batch_specs()}
  assert len(specs) == 2  # One spec per kind of batch: train.py compiles each.
  # Mixture 0.2 images / 0.8 videos: batch 0 of every 5 holds 8 * T images.
  for n, t, t_in, image in ((8 * s.frames, 1, 1, True), (8, s.frames, None, False)):
    batch = next(it)
    spec = specs.pop(ip.batch_key(batch))
    for k, v in batch.items():
      assert (spec[k].dtype, spec[k].sharding) == (v.dtype, v.sharding), k
    assert batch["video"].shape == (n, t, h, w, 3)
    assert batch["video"].dtype == np.float32
    video = np.asarray(batch["video"])
    assert video.min() >= -1 and video.max() <= 1 and video.min() == -1
    if cond_shape is None:
      assert "cond_video" not in batch
    else:
      assert batch["cond_video"].shape == (n, t_in or cond_shape[0], *cond_shape[1:], 3)
    assert batch["tokens"].dtype == np.int32 and batch["text_mask"].dtype == bool
    assert (
      batch["tokens"].shape == batch["text_mask"].shape == (n, config.text.max_length)
    )
    np.testing.assert_array_equal(batch["is_image"], np.full(n, image))
    for v in batch.values():
      assert v.sharding == sharding.batch_sharding(mesh)  # As the steps use it.
      assert len(v.addressable_shards) == jax.device_count()


def test_video_examples_are_the_source_clips(data_dir, mesh):
  """tsr1 demo: 16 frames @8 fps from 16 @8 fps; cond 8 frames @4 fps at 16x16."""
  config = make_config(
    "configs/tsr1.py:demo",
    data_dir,
    shuffle=False,
    mixture={"bouncing_digits/videos": 1.0},
  )
  batch = jax.tree.map(np.asarray, next(ip.create_iterator(config, mesh=mesh)))
  videos = source_videos(data_dir)[:8]
  assert not batch["is_image"].any()
  for i in range(8):
    expect = video_io.resize(videos[i], 16, 16)
    np.testing.assert_allclose(batch["video"][i], expect / 127.5 - 1, atol=1e-6)
    np.testing.assert_allclose(
      batch["cond_video"][i], expect[::2] / 127.5 - 1, atol=1e-6
    )


def test_image_examples_are_single_images_with_their_own_captions(data_dir, mesh):
  """ssr1 demo: 8 * 16 images 32x32, each conditioned on itself at 16x16."""
  config = make_config(
    "configs/ssr1.py:demo", data_dir, mixture={"bouncing_digits/images": 1.0}
  )
  batch = jax.tree.map(np.asarray, next(ip.create_iterator(config, mesh=mesh)))
  assert batch["video"].shape == (128, 1, 32, 32, 3) and batch["is_image"].all()
  assert batch["cond_video"].shape == (128, 1, 16, 16, 3)
  # The rendered images (an independent reference for pixels and captions).
  n = train_size(data_dir)
  rendered = [bouncing_digits.render_image("train", i) for i in range(n)]
  refs = np.stack([video_io.resize(r["image"][None], 32, 32)[0] for r in rendered])
  pixels = np.round((batch["video"][:, 0] + 1) * 127.5)
  seen = set()
  for j, caption in enumerate(captions(batch["tokens"])):
    (match,) = np.flatnonzero((pixels[j] == refs).all(axis=(1, 2, 3)))
    assert caption == rendered[match]["caption"], (j, match)
    expect = video_io.resize(rendered[match]["image"][None], 16, 16)[0] / 127.5 - 1
    np.testing.assert_allclose(batch["cond_video"][j, 0], expect, atol=1e-6)
    seen.add(int(match))
  # 128 images of a small source: all of them appear, with varied captions.
  assert seen == set(range(n))
  assert len({r["caption"] for r in rendered}) > 1


def halves(host):
  """rows_of of host 0 or 1 of two that split every batch in halves."""
  return lambda n: np.arange(n).reshape(2, -1)[host]


def test_mixture_picks_whole_batches_in_proportion_on_every_process(data_dir):
  config = make_config(
    "configs/base.py:demo",
    data_dir,
    mixture={"bouncing_digits/videos": 0.75, "bouncing_digits/images": 0.25},
  )
  patterns = []
  for host in range(2):
    batches = ip.host_batches(config, rows_of=halves(host))
    kinds = []
    for i in range(12):
      num_rows, batch = batches[i]
      image = bool(batch["is_image"][0])
      assert batch["is_image"].all() == image  # A batch holds one kind.
      n, t = (8 * 8, 1) if image else (8, 8)
      assert num_rows == n
      assert batch["video"].shape == (n // 2, t, 16, 16, 3)
      assert batch["tokens"].shape[0] == n // 2
      kinds.append(image)
    patterns.append(kinds)
  assert patterns[0] == patterns[1]  # Every host has the same kind of batch.
  assert sum(patterns[0]) == 3  # 1/4 of the batches are images.


@pytest.mark.parametrize(
  "hosts",
  [
    [halves(0), halves(1)],
    # Interleaved pairs (a data axis of 2 over hosts that each hold an fsdp
    # half), and a host holding every row (tensor parallelism across hosts).
    [lambda n: np.arange(n).reshape(-1, 2)[::2].ravel(), lambda n: np.arange(n)],
  ],
)
def test_hosts_rows_are_the_rows_of_one_global_batch(data_dir, hosts):
  # Clips and images, shuffled, with random crops: the rows a host loads are
  # those rows of the batch one process holding every device loads.
  config = make_config("configs/tsr1.py:demo", data_dir)
  config.stage.crop = (8, 8)
  whole = ip.host_batches(config)
  for rows_of in hosts:
    mine = ip.host_batches(config, rows_of=rows_of)
    for i in range(6):
      (n, full), (n_host, part) = whole[i], mine[i]
      assert n == n_host
      for k in full:
        np.testing.assert_array_equal(part[k], full[k][rows_of(n)], err_msg=k)


def test_global_batches_take_the_examples_in_one_global_order(data_dir):
  config = make_config(
    "configs/tsr1.py:demo",
    data_dir,
    shuffle=False,
    mixture={"bouncing_digits/videos": 1.0},
  )
  videos = source_videos(data_dir)
  n = len(videos)
  for j in range(2):  # Batch j holds source examples 8j, ..., 8j + 7 (mod n).
    num_rows, batch = ip.host_batches(config, rows_of=halves(1))[j]
    assert num_rows == 8 and batch["video"].shape[0] == 4
    for r in range(4):
      expect = video_io.resize(videos[(8 * j + 4 + r) % n], 16, 16)
      np.testing.assert_array_equal(batch["video"][r], expect)


def test_encoded_source_decodes_only_selected_frames(data_dir):
  encoded = ip.open_source("bouncing_digits/videos", data_dir, "train", encoded=True)
  example = encoded.data[3]
  assert isinstance(example["video"][0], bytes)
  np.testing.assert_array_equal(
    encoded.frames(example, [1, 5, 9]), source_videos(data_dir)[3, [1, 5, 9]]
  )


def test_determinism_and_seed(data_dir, mesh):
  config = make_config("configs/base.py:demo", data_dir)
  a = take(ip.create_iterator(config, mesh=mesh), 3)
  b = take(ip.create_iterator(config, mesh=mesh), 3)
  c = take(ip.create_iterator(config, mesh=mesh, seed=1), 3)
  assert_batches_equal(a, b)
  assert not np.array_equal(a[0]["video"], c[0]["video"])


def test_state_restores_exactly(data_dir, mesh):
  config = make_config("configs/ssr1.py:demo", data_dir)
  it = ip.create_iterator(config, mesh=mesh)
  take(it, 4)  # The next 3 batches: 2 of clips, 1 of images.
  state = it.get_state()
  json.loads(state)  # JSON-able.
  expected = take(it, 3)
  fresh = ip.create_iterator(config, mesh=mesh)
  fresh.set_state(state)
  assert_batches_equal(take(fresh, 3), expected)


_RESUME_SCRIPT = textwrap.dedent(
  """
  import sys
  import jax
  import numpy as np
  from imagen_video_jax import config_utils, input_pipeline as ip, sharding

  mode, data_dir, state_file, out_file = sys.argv[1:]
  config = config_utils.load_config("configs/base.py:demo")
  config.data.data_dir, config.batch_size, config.data.prefetch = data_dir, 8, 2
  config.data.mixture = {"bouncing_digits/videos": 0.8, "bouncing_digits/images": 0.2}
  mesh = sharding.make_mesh((-1, 1, 1))
  it = ip.create_iterator(config, mesh=mesh)
  if mode == "save":
    for _ in range(4):
      next(it)
    open(state_file, "w").write(it.get_state())
  else:
    it.set_state(open(state_file).read())
    batches = [jax.tree.map(np.asarray, next(it)) for _ in range(2)]
    np.savez(out_file, **{f"{i}/{k}": v for i, b in enumerate(batches) for k, v in b.items()})
  """
)


def test_state_restores_across_process_restart(data_dir, mesh, tmp_path):
  script, state, out = tmp_path / "run.py", tmp_path / "state.json", tmp_path / "b.npz"
  script.write_text(_RESUME_SCRIPT)
  env = dict(os.environ, XLA_FLAGS=xla_flags(4))
  env["PYTHONPATH"] = os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])
  for mode in ("save", "restore"):
    subprocess.run(
      [sys.executable, str(script), mode, data_dir, str(state), str(out)],
      check=True,
      cwd=ROOT,
      env=env,
      timeout=300,
    )
  config = make_config("configs/base.py:demo", data_dir)
  expected = take(ip.create_iterator(config, mesh=mesh), 6)[4:]  # Clips, images.
  got = np.load(out)
  for i, batch in enumerate(expected):
    for k, v in batch.items():
      np.testing.assert_array_equal(got[f"{i}/{k}"], v, err_msg=k)


# --- Bad input ---


def test_unbuilt_split_gives_build_command(data_dir, mesh, tmp_path):
  config = make_config("configs/base.py:demo", str(tmp_path))
  with pytest.raises(ValueError, match="tfds build data/bouncing_digits --config="):
    ip.create_iterator(config, mesh=mesh)
  config = make_config("configs/base.py:demo", data_dir)
  with pytest.raises(ValueError, match="'validation'"):
    ip.create_iterator(config, mesh=mesh, split="validation")


@pytest.mark.parametrize(
  "mixture, match",
  [
    ({"moving_mnist/videos": 1.0}, "moving_mnist/videos"),
    ({"bouncing_digits/videos": 0.0}, "bouncing_digits/videos"),
    ({"bouncing_digits/videos": 1.0, "bouncing_digits/images": -1.0}, "-1.0"),
  ],
)
def test_bad_mixture(data_dir, mesh, mixture, match):
  config = make_config("configs/base.py:demo", data_dir, mixture=mixture)
  with pytest.raises(ValueError, match=match):
    ip.create_iterator(config, mesh=mesh)


def test_stage_larger_than_source(data_dir, mesh):
  config = make_config("configs/base.py:demo", data_dir)
  config.stage.height = 96
  with pytest.raises(ValueError, match="96x16"):
    ip.create_iterator(config, mesh=mesh)
  config = make_config("configs/base.py:demo", data_dir)
  config.stage.frames = 12  # 12 frames at 4 fps need 23 of the 16 source frames.
  with pytest.raises(ValueError, match="12 frames"):
    ip.create_iterator(config, mesh=mesh)


def test_precomputed_needs_text_emb(data_dir, mesh):
  config = make_config("configs/base.py:demo", data_dir)
  config.text.precomputed = True
  with pytest.raises(ValueError, match="text_emb"):
    next(ip.create_iterator(config, mesh=mesh))


# --- Damaged files ---

_VIDEOS = "bouncing_digits/videos"


def _train_file(data_dir: str) -> str:
  """The path of the tiny build's one train file of bouncing_digits/videos."""
  (instruction,) = (
    tfds.builder(_VIDEOS, data_dir=data_dir).info.splits["train"].file_instructions
  )
  return instruction.filename


def _damage(data_dir: str, tmp_path, how: str) -> tuple[str, str]:
  """(data_dir, path): a copy of the tiny build with its videos' train file damaged.

  Truncated to half, the file's footer is gone: its reader fails to open, at the
  first read. 2 KB of random bytes in the middle damage one record's chunk.
  """
  copy = str(tmp_path / "tfds")
  shutil.copytree(data_dir, copy)
  path = _train_file(copy)
  size = os.path.getsize(path)
  if how == "truncated":
    os.truncate(path, size // 2)
  else:
    with open(path, "r+b") as f:
      f.seek(size // 2)
      f.write(np.random.default_rng(0).bytes(2048))
  return copy, path


def _assert_names_damage(error: BaseException, path: str) -> int:
  """Checks a read error's message and cause; returns the record it names."""
  assert isinstance(error, ip.DataReadError) and isinstance(error, OSError)
  message = str(error)
  assert "\n" not in message  # The binaries report it as one line.
  match = re.search(
    r"^Dataset bouncing_digits/videos:1\.0\.0 split 'train': record (\d+) "
    r"\(record (\d+) of file (\S+)\) cannot be read: RuntimeError: Corrupted",
    message,
  )
  assert match, message
  assert match[3] == path
  assert match[1] == match[2]  # One file: its records are the split's.
  assert isinstance(error.__cause__, RuntimeError)  # The reader's, chained.
  assert "Riegeli" in str(error.__cause__)
  return int(match[1])


@pytest.mark.parametrize("how", ["truncated", "overwritten"])
def test_damaged_file_names_dataset_split_file_and_record(data_dir, tmp_path, how):
  data_dir, path = _damage(data_dir, tmp_path, how)
  data = ip.open_source(_VIDEOS, data_dir, "train", encoded=True).data
  bad = []
  for i in range(len(data)):
    try:
      data[i]
    except ip.DataReadError as e:
      assert _assert_names_damage(e, path) == i
      bad.append(i)
  assert bad  # Every record when truncated; the damaged one(s) when overwritten.


@pytest.mark.parametrize(
  "how, worker_count, prefetch",
  [
    ("truncated", 0, 0),
    ("truncated", 0, 2),  # The runlocal configs' prefetch threads.
    ("overwritten", 0, 0),
    ("overwritten", 0, 2),
    ("overwritten", 1, 2),  # A worker process (8 s): the error is pickled.
  ],
)
def test_damaged_file_error_surfaces_from_next(
  data_dir, mesh, tmp_path, how, worker_count, prefetch
):
  """From `next` in the main thread: read there, in threads or in a worker."""
  if worker_count:
    flags.FLAGS.mark_as_parsed()  # grain's workers read absl flags.
  data_dir, path = _damage(data_dir, tmp_path, how)
  config = make_config(
    "configs/base.py:demo",
    data_dir,
    mixture={_VIDEOS: 1.0},
    worker_count=worker_count,
    prefetch=prefetch,
  )
  it = ip.create_iterator(config, mesh=mesh)

  def hang(signum, frame):
    raise TimeoutError("The pipeline hangs on a damaged file.")

  # One epoch (2 batches of 8 of the 16 clips) reads every record.
  previous = signal.signal(signal.SIGALRM, hang)
  signal.alarm(120)
  try:
    with pytest.raises(ip.DataReadError) as error:
      take(it, 4)
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)
    it.close()
  _assert_names_damage(error.value, path)


def test_read_error_names_the_file_holding_the_record():
  """A split over files: global record -> (file, record in it), with skips."""
  files = [
    types.SimpleNamespace(filename=f"f{i}", skip=skip, take=take)
    for i, (skip, take) in enumerate([(0, 5), (2, 3), (0, 4)])
  ]
  info = types.SimpleNamespace(
    version="1.0.0", splits={"train": types.SimpleNamespace(file_instructions=files)}
  )

  class Failing:
    def __len__(self):
      return 12

    def __getitem__(self, index):
      raise RuntimeError("Corrupted\nrecord")

  data = ip._NamedRecords(Failing(), "d/c", "train", info)
  for index, where in [
    (0, "record 0 of file f0"),
    (4, "record 4 of file f0"),
    (5, "record 2 of file f1"),
    (7, "record 4 of file f1"),
    (8, "record 0 of file f2"),
    (11, "record 3 of file f2"),
  ]:
    with pytest.raises(ip.DataReadError) as error:
      data[index]
    assert str(error.value) == (
      f"Dataset d/c:1.0.0 split 'train': record {index} ({where}) cannot be "
      "read: RuntimeError: Corrupted record"
    )


def test_a_dataset_that_is_not_built_is_one_short_line(tmp_path):
  missing = str(tmp_path / "no_data")
  with pytest.raises(ValueError) as e:
    ip.open_source("bouncing_digits/videos", missing, "train")
  message = str(e.value)
  assert f"is not built in {missing!r} (no such folder)" in message
  assert "tfds build data/bouncing_digits --config=videos" in message
  # Not tfds's list of every dataset it knows.
  assert "\n" not in message and "abstract_reasoning" not in message
