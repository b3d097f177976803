"""TFDS builder for a user's folder of captioned images (see README.md).

  tfds build data/image_text_folder --manual_dir=/path/to/images \
    --config='{"name": "res64", "resolution": [64, 64]}'

or from Python: `imagen_video_jax.data_build.build_dataset("image_text_folder",
data_dir, config={...}, manual_dir=folder)`. Images are decoded with PIL as
RGB and, when the config has a resolution, resized (antialiased bilinear) to
cover it and centre-cropped. Files that cannot be decoded or have no caption
are skipped and counted in `info.metadata["skipped"]`.
"""

from __future__ import annotations

import dataclasses

import tensorflow_datasets as tfds

from imagen_video_jax import folder_data


@dataclasses.dataclass
class ImageFolderConfig(tfds.core.BuilderConfig):
  """Layout of an image folder dataset.

  Attributes:
    resolution: (height, width) of the stored images, or None to keep each
      image's own size.
    encoding_format: 'png' (lossless) or 'jpeg' storage.
  """

  resolution: tuple[int, int] | None = (64, 64)
  encoding_format: str = "png"

  def __post_init__(self):
    self.resolution = folder_data.check_layout(self.resolution, self.encoding_format)


class Builder(folder_data.FolderBuilder, tfds.core.GeneratorBasedBuilder):
  """Images with captions from a folder."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [ImageFolderConfig(name="default", description="64x64 images.")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Pass the folder of images as manual_dir. Captions: a captions.jsonl at its
  root with lines {"file": "relative/path.png", "caption": "..."}, or a .txt
  beside each image. Sub-folders train/validation/test become splits.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    shape = (*(cfg.resolution or (None, None)), 3)
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(
            shape=shape, encoding_format=cfg.encoding_format
          ),
          "caption": tfds.features.Text(),
          "file": tfds.features.Text(),  # Path relative to the split folder.
        }
      ),
      metadata=tfds.core.MetadataDict(),
    )

  def _generate_examples(self, split, folder):
    files = folder_data.captioned_files(
      folder, folder_data.IMAGE_EXTENSIONS, split, self._skips
    )
    for rel, path, caption in files:
      try:
        image = folder_data.load_image(path, self.builder_config.resolution)
      except ValueError as e:
        self._skips.skip(split, rel, "undecodable", str(e))
        continue
      yield rel, {"image": image, "caption": caption, "file": rel}
    # Saved with dataset_info.json once every split is written.
    self.info.metadata.update(self._skips.as_metadata())
