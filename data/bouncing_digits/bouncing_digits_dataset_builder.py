"""TFDS builder for bouncing digits (spec: docs/BOUNCING_DIGITS.md).

Build from the repository root with
  tfds build data/bouncing_digits --config=videos --data_dir=~/tensorflow_datasets
  tfds build data/bouncing_digits --config='{"name": "videos_small",
    "kind": "videos", "train_size": 64, "test_size": 16}'  # a custom config
(the `tfds` CLI needs apache-beam and mlcroissant importable) or from Python:
`imagen_video_jax.data_build.build_dataset("bouncing_digits", data_dir,
config="videos", train_size=64, test_size=16)`.

Examples come from `imagen_video_jax.bouncing_digits`; each is a pure function
of (split, kind, index, seed), so rebuilding gives identical bytes. Read back
with `builder.as_data_source(split)`: `video` is then a list of 16 uint8
[64, 64, 3] frames (TFDS decodes a `Video` feature frame by frame), `image` a
uint8 [64, 64, 3] array and the labels ints.
"""

from __future__ import annotations

import dataclasses

import tensorflow_datasets as tfds

from imagen_video_jax import bouncing_digits as bd

_DEFAULT_SIZES = {"train": 20_000, "test": 2_000}


@dataclasses.dataclass
class BouncingDigitsConfig(tfds.core.BuilderConfig):
  """A bouncing digits configuration.

  Attributes:
    kind: 'videos' (16-frame clips) or 'images' (single frames).
    train_size: number of train examples.
    test_size: number of test examples.
    seed: dataset seed; example i of a split is a function of (seed, i).
  """

  kind: str = "videos"
  train_size: int = _DEFAULT_SIZES["train"]
  test_size: int = _DEFAULT_SIZES["test"]
  seed: int = 0

  def __post_init__(self):
    if self.kind not in bd.KINDS:
      raise ValueError(f"Unknown kind {self.kind!r}; expected one of {bd.KINDS}.")
    for field in ("train_size", "test_size"):
      if int(getattr(self, field)) < 1:
        raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}.")


class Builder(tfds.core.GeneratorBasedBuilder):
  """Coloured handwritten digits bouncing on a 64x64 canvas, with captions."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
    BouncingDigitsConfig(name="videos", kind="videos", description="16-frame clips."),
    BouncingDigitsConfig(name="images", kind="images", description="Single frames."),
  ]

  def __init__(
    self,
    *,
    train_size: int | None = None,
    test_size: int | None = None,
    file_format: str | None = None,
    **kwargs,
  ):
    """Builder; `train_size`/`test_size` override the config's sizes in place.

    Unlike a custom config (which needs a new name), the overrides keep the
    config's name and so its data directory, e.g. a tiny `videos` for tests.
    """
    self._size_overrides = {"train": train_size, "test": test_size}
    for split, size in self._size_overrides.items():
      if size is not None and int(size) < 1:
        raise ValueError(f"{split}_size must be >= 1, got {size}.")
    super().__init__(file_format=file_format or "array_record", **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    labels = {
      "caption": tfds.features.Text(),
      "digit": tfds.features.ClassLabel(num_classes=10),
      "colour": tfds.features.ClassLabel(names=list(bd.COLOURS)),
    }
    if self.builder_config.kind == "videos":
      shape = (bd.FRAMES, bd.CANVAS, bd.CANVAS, 3)
      features = {
        "video": tfds.features.Video(shape, encoding_format="png"),
        "axis": tfds.features.ClassLabel(names=list(bd.AXES)),
        **labels,
      }
    else:
      shape = (bd.CANVAS, bd.CANVAS, 3)
      features = {"image": tfds.features.Image(shape=shape), **labels}
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(features),
      homepage="https://archive.ics.uci.edu/dataset/80",
      metadata=tfds.core.MetadataDict(fps=bd.FPS, seed=self.builder_config.seed),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Everything is rendered; nothing to download.
    cfg = self.builder_config
    defaults = {"train": cfg.train_size, "test": cfg.test_size}
    return {
      split: self._generate_examples(split, self._size_overrides[split] or size)
      for split, size in defaults.items()
    }

  def _generate_examples(self, split: str, size: int):
    cfg = self.builder_config
    for index in range(size):
      if cfg.kind == "videos":
        ex = bd.render_video(split, index, cfg.seed)
        keep = ("video", "caption", "digit", "colour", "axis")
      else:
        ex = bd.render_image(split, index, cfg.seed)
        keep = ("image", "caption", "digit", "colour")
      yield index, {k: ex[k] for k in keep}
