"""Tests of the bouncing digits renderer and its TFDS builder."""

import functools
import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from sklearn.datasets import load_digits

from imagen_video_jax import bouncing_digits as bd
from imagen_video_jax import data_build

# The spec's palette and grammar, written out independently of the module.
SPEC_PALETTE = {
  "red": (255, 0, 0),
  "green": (0, 255, 0),
  "blue": (0, 0, 255),
  "yellow": (255, 255, 0),
  "cyan": (0, 255, 255),
  "magenta": (255, 0, 255),
  "white": (255, 255, 255),
}
SPEC_MOTION = {"horizontal": "moving left and right", "vertical": "moving up and down"}
SIZES = {"train": 8, "test": 4}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """Tiny builds: videos twice (separate dirs) and images once."""
  kw = {"train_size": SIZES["train"], "test_size": SIZES["test"]}
  return {
    "videos": data_build.build_dataset(
      "bouncing_digits", tmp_path_factory.mktemp("a"), config="videos", **kw
    ),
    "videos_again": data_build.build_dataset(
      "bouncing_digits", tmp_path_factory.mktemp("b"), config="videos", **kw
    ),
    "images": data_build.build_dataset(
      "bouncing_digits", tmp_path_factory.mktemp("c"), config="images", **kw
    ),
  }


def locate(frame, glyph_rgb):
  """All top-left (x, y) where `glyph_rgb` [24, 24, 3] sits exactly in `frame`."""
  windows = sliding_window_view(frame, glyph_rgb.shape)[:, :, 0]  # [41, 41, 24, 24, 3]
  ys, xs = np.nonzero((windows == glyph_rgb).all(axis=(2, 3, 4)))
  return list(zip(xs.tolist(), ys.tolist()))


@functools.cache
def all_glyphs_in(colour):
  """Every glyph rendered in `colour` per the spec, uint8 [1797, 24 * 24 * 3]."""
  rgb = np.asarray(SPEC_PALETTE[colour], np.float32)
  return np.round(bd.glyphs()[..., None] * rgb).astype(np.uint8).reshape(1797, -1)


def identify_glyphs(crop, colour):
  """Indices of all glyphs whose rendering in `colour` equals `crop` exactly."""
  return np.nonzero((all_glyphs_in(colour) == crop.reshape(1, -1)).all(axis=1))[0]


def simulate(p0, v, steps=bd.FRAMES):
  """The spec's bounce rule, vectorised over candidate velocities v [N]."""
  p, v, out = np.full_like(v, p0, dtype=np.float64), v.astype(np.float64), []
  for f in range(steps):
    if f:
      p = p + v
      low, high = p < 0, p > 40
      p = np.where(low, -p, np.where(high, 80 - p, p))
      v = np.where(low | high, -v, v)
    out.append(p)
  return np.stack(out, axis=-1)  # [N, steps]


def test_glyphs_match_antialiased_bilinear_reference():
  scans = load_digits().images / 16.0
  ref = jax.image.resize(
    jnp.asarray(scans, jnp.float32), (len(scans), 24, 24), "linear"
  )
  np.testing.assert_allclose(bd.glyphs(), np.clip(ref, 0, 1), atol=1e-5)
  np.testing.assert_array_equal(bd.labels(), load_digits().target)


def test_pools_partition_scans_by_index_mod_5():
  train, test = set(bd.train_pool().tolist()), set(bd.test_pool().tolist())
  assert len(test) == 360 and len(train) == 1437 and not train & test
  assert train | test == set(range(1797))
  assert all(i % 5 == 0 for i in test)


@pytest.mark.parametrize("split", ["train", "test"])
def test_video_frames_follow_bounce_rule_and_labels(split):
  for index in range(25):
    ex = bd.render_video(split, index, seed=3)
    video, colour, axis = ex["video"], ex["colour"], ex["axis"]
    assert video.shape == (16, 64, 64, 3) and video.dtype == np.uint8
    assert ex["caption"] == f"the {colour} digit {ex['digit']} is {SPEC_MOTION[axis]}"
    # The glyph in frame 0 identifies a glyph of this split's pool and label.
    x0, y0 = (int(c) for c in ex["positions"][0])
    ids = identify_glyphs(video[0, y0 : y0 + 24, x0 : x0 + 24], colour)
    assert ex["glyph_index"] in ids
    assert ex["glyph_index"] in bd.glyph_pool(split)
    assert ex["digit"] == load_digits().target[ex["glyph_index"]]
    # Locate the glyph in every frame; the rest of the canvas is black.
    glyph = video[0, y0 : y0 + 24, x0 : x0 + 24]
    corners = []
    for frame in video:
      [(x, y)] = locate(frame, glyph)
      rest = frame.copy()
      rest[y : y + 24, x : x + 24] = 0
      assert not rest.any()
      corners.append((x, y))
    corners = np.array(corners)
    np.testing.assert_array_equal(corners, np.rint(ex["positions"]))
    moving = 0 if axis == "horizontal" else 1
    assert (corners[:, 1 - moving] == corners[0, 1 - moving]).all()
    assert corners.min() >= 0 and corners.max() <= 40
    # Some speed in [2, 4] px/frame, with a sign, reproduces the frames.
    v = np.linspace(2, 4, 4001)
    v = np.concatenate([v, -v])
    fits = (np.rint(simulate(corners[0, moving], v)) == corners[:, moving]).all(1)
    assert fits.any()
    assert 2 <= abs(ex["velocity"]) <= 4
    np.testing.assert_allclose(
      simulate(corners[0, moving], np.array([ex["velocity"]]))[0],
      ex["positions"][:, moving],
    )


def test_image_examples():
  for index in range(40):
    ex = bd.render_image("test", index, seed=1)
    x, y = ex["position"].astype(int)
    assert ex["caption"] == f"the {ex['colour']} digit {ex['digit']}"
    assert locate(ex["image"], ex["image"][y : y + 24, x : x + 24])[0] == (x, y)
    ids = identify_glyphs(ex["image"][y : y + 24, x : x + 24], ex["colour"])
    assert ex["glyph_index"] in ids and ex["glyph_index"] % 5 == 0


def test_examples_depend_on_seed_split_kind_and_index_only():
  a = bd.render_video("train", 5, seed=0)["video"]
  np.testing.assert_array_equal(a, bd.render_video("train", 5, seed=0)["video"])
  assert not np.array_equal(a, bd.render_video("train", 5, seed=1)["video"])
  assert not np.array_equal(a, bd.render_video("train", 6, seed=0)["video"])
  draws = {bd.render_video("train", i)["axis"] for i in range(30)}
  assert draws == set(bd.AXES)
  assert {bd.render_video("train", i)["colour"] for i in range(60)} == set(bd.COLOURS)


def test_no_test_glyph_in_built_train_split(built):
  """Identifies every stored train glyph by its pixels; none is a test glyph."""
  for kind in ("videos", "images"):
    for ex in built[kind].as_data_source("train"):
      frame = np.asarray(ex["video"][0] if kind == "videos" else ex["image"])
      colour = bd.COLOURS[ex["colour"]]
      ys, xs = np.nonzero(frame.any(-1))
      # Search every placement whose window covers all lit pixels.
      found = set()
      for y in range(max(0, ys.max() - 23), min(ys.min(), 40) + 1):
        for x in range(max(0, xs.max() - 23), min(xs.min(), 40) + 1):
          found.update(identify_glyphs(frame[y : y + 24, x : x + 24], colour).tolist())
      assert found and all(i % 5 != 0 for i in found), found
      assert all(bd.labels()[i] == ex["digit"] for i in found)


def test_built_dataset_reads_back_as_rendered(built):
  for kind in ("videos", "images"):
    builder = built[kind]
    assert builder.info.file_format.value == "array_record"
    for split, size in SIZES.items():
      source = builder.as_data_source(split)
      assert len(source) == size
      render = bd.render_video if kind == "videos" else bd.render_image
      expected = [render(split, i, 0) for i in range(size)]
      key = "video" if kind == "videos" else "image"
      by_bytes = {e[key].tobytes(): e for e in expected}
      for ex in source:
        pixels = ex[key]
        if kind == "videos":  # TFDS returns a Video as a list of frames.
          assert isinstance(pixels, list) and len(pixels) == 16
        pixels = np.asarray(pixels)
        assert pixels.dtype == np.uint8
        exp = by_bytes.pop(pixels.tobytes())
        caption = ex["caption"].decode()
        assert caption == exp["caption"]
        colour = bd.COLOURS[ex["colour"]]
        assert caption.startswith(f"the {colour} digit {ex['digit']}")
        assert (colour, ex["digit"]) == (exp["colour"], exp["digit"])
        if kind == "videos":
          assert caption.endswith(SPEC_MOTION[bd.AXES[ex["axis"]]])
      assert not by_bytes


def test_rebuild_gives_identical_bytes(built):
  def digests(builder):
    files = sorted(builder.data_path.glob("*.array_record*"))
    assert files
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}

  assert digests(built["videos"]) == digests(built["videos_again"])


def test_bad_input_raises():
  with pytest.raises(ValueError, match="valid"):
    bd.render_video("valid", 0)
  with pytest.raises(ValueError, match="purple"):
    bd.video_caption("purple", 3, "vertical")
  with pytest.raises(ValueError, match="-1"):
    bd.render_image("train", -1)
  with pytest.raises(ValueError, match="clips"):
    data_build.build_dataset("bouncing_digits", "/nonexistent", config="clips")
  with pytest.raises(ValueError, match="mnist"):
    data_build.build_dataset("mnist", "/nonexistent")
  cls = data_build.builder_class("bouncing_digits")
  with pytest.raises(ValueError, match="train_size"):
    cls(config="videos", data_dir="/nonexistent", train_size=0)
  with pytest.raises(ValueError, match="gifs"):
    cls.builder_config_cls(name="x", kind="gifs")
