"""TFDS builder for a user's folder of captioned videos (see README.md).

  tfds build data/video_text_folder --manual_dir=/path/to/videos \
    --config='{"name": "clips32_12fps", "frames": 32, "fps": 12,
               "resolution": [48, 80], "stride": 16}'

or from Python: `imagen_video_jax.data_build.build_dataset("video_text_folder",
data_dir, config={...}, manual_dir=folder)`. Each video is decoded with the
ffmpeg binary of imageio-ffmpeg at the config's fps and resolution and cut into
clips of `frames` frames whose starts are `stride` frames apart. Files that
cannot be decoded, are shorter than one clip or have no caption are skipped and
counted in `info.metadata["skipped"]`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from imagen_video_jax import folder_data


@dataclasses.dataclass
class VideoFolderConfig(tfds.core.BuilderConfig):
  """Clip layout of a video folder dataset.

  Attributes:
    frames: frames per clip.
    fps: frame rate the videos are resampled to.
    resolution: (height, width) of the clips (scaled to cover, centre-cropped).
    stride: frames between the starts of consecutive clips of a video
      (0: `frames`, i.e. back-to-back clips).
    max_clips_per_video: most clips taken from one video (0: no limit).
    encoding_format: 'png' (lossless) or 'jpeg' frame storage.
  """

  frames: int = 16
  fps: float = 8.0
  resolution: tuple[int, int] = (64, 64)
  stride: int = 0
  max_clips_per_video: int = 0
  encoding_format: str = "png"

  def __post_init__(self):
    self.resolution = folder_data.check_layout(self.resolution, self.encoding_format)
    for field in ("frames", "fps"):
      if getattr(self, field) <= 0:
        raise ValueError(f"{field} must be > 0, got {getattr(self, field)}.")
    for field in ("stride", "max_clips_per_video"):
      if getattr(self, field) < 0:
        raise ValueError(f"{field} must be >= 0, got {getattr(self, field)}.")


class Builder(folder_data.FolderBuilder, tfds.core.GeneratorBasedBuilder):
  """Clips with captions from a folder of videos."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
    VideoFolderConfig(name="default", description="16 frames, 8 fps, 64x64."),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Pass the folder of videos as manual_dir. Captions: a captions.jsonl at its
  root with lines {"file": "relative/path.mp4", "caption": "..."}, or a .txt
  beside each video. Sub-folders train/validation/test become splits.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    shape = (cfg.frames, *cfg.resolution, 3)
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(
        {
          "video": tfds.features.Video(shape, encoding_format=cfg.encoding_format),
          "caption": tfds.features.Text(),
          "file": tfds.features.Text(),  # Path relative to the split folder.
          "start_frame": tfds.features.Scalar(dtype=np.int32),  # At cfg.fps.
        }
      ),
      metadata=tfds.core.MetadataDict(fps=cfg.fps),
    )

  def _generate_examples(self, split, folder):
    cfg = self.builder_config
    stride = cfg.stride or cfg.frames
    n_max = cfg.max_clips_per_video
    max_frames = cfg.frames + (n_max - 1) * stride if n_max else 0
    files = folder_data.captioned_files(
      folder, folder_data.VIDEO_EXTENSIONS, split, self._skips
    )
    for rel, path, caption in files:
      try:
        video = folder_data.decode_video(
          path, fps=cfg.fps, resolution=cfg.resolution, max_frames=max_frames
        )
      except ValueError as e:
        self._skips.skip(split, rel, "undecodable", str(e))
        continue
      if len(video) < cfg.frames:
        self._skips.skip(split, rel, "too_short", f"{len(video)} frames")
        continue
      for start in range(0, len(video) - cfg.frames + 1, stride):
        clip = {"video": video[start : start + cfg.frames], "caption": caption}
        yield f"{rel}#{start}", {**clip, "file": rel, "start_frame": start}
    # Saved with dataset_info.json once every split is written.
    self.info.metadata.update(self._skips.as_metadata())
