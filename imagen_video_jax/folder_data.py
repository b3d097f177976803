"""What the folder datasets' builders share: captions, splits, decoding, skips.

Folder datasets (video_text_folder, image_text_folder) read the folder given as
TFDS's manual_dir (`--manual_dir` of `tfds build`). Sub-folders named
train/validation/test become splits; otherwise the whole folder is `train`.
Captions come from a `captions.jsonl` at the root of a split's folder
({"file": "path/relative/to/it", "caption": ...} per line) or, failing that,
from a `.txt` beside each file. A file that cannot be decoded or has no
caption is skipped, logged and counted in `info.metadata["skipped"]`; it never
stops a build.
"""

from __future__ import annotations

import collections
import json
import pathlib
import subprocess
from collections.abc import Iterable
from typing import Any

import numpy as np
import PIL.Image
from absl import logging

CAPTIONS_FILE = "captions.jsonl"
SPLIT_DIRS = ("train", "validation", "test")
VIDEO_EXTENSIONS = (".mp4", ".webm", ".gif", ".mov", ".avi", ".mkv", ".m4v", ".mpg")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MAX_LISTED_SKIPS = 100  # Skipped files named in the metadata, per split.


class SkipLog:
  """Counts and logs the files a build skipped, per split and reason."""

  def __init__(self):
    self.counts: dict[str, collections.Counter] = collections.defaultdict(
      collections.Counter
    )
    self.files: dict[str, list[str]] = collections.defaultdict(list)

  def skip(self, split: str, file: str, reason: str, detail: str = "") -> None:
    logging.warning("Skipping %s (%s): %s %s", file, split, reason, detail[-500:])
    self.counts[split][reason] += 1
    if len(self.files[split]) < MAX_LISTED_SKIPS:
      self.files[split].append(f"{file}: {reason}")

  def as_metadata(self) -> dict[str, Any]:
    """JSON-able {'skipped': {split: {reason: n}}, 'skipped_files': {...}}."""
    return {
      "skipped": {s: dict(c) for s, c in sorted(self.counts.items())},
      "skipped_files": dict(sorted(self.files.items())),
    }


def check_layout(resolution: Any, encoding_format: str) -> tuple[int, int] | None:
  """Validates a folder config's resolution and encoding; returns (h, w) or None.

  Raises:
    ValueError: naming the field that is wrong.
  """
  if resolution is not None:
    resolution = tuple(int(r) for r in resolution)
    if len(resolution) != 2 or min(resolution) < 1:
      raise ValueError(f"resolution must be (height, width) > 0, got {resolution}.")
  if encoding_format not in ("png", "jpeg"):
    raise ValueError(f"encoding_format must be png or jpeg, got {encoding_format!r}.")
  return resolution


def folder_splits(root: str | pathlib.Path) -> dict[str, pathlib.Path]:
  """{split: folder}: train/validation/test sub-folders, else {'train': root}."""
  root = pathlib.Path(root)
  if not root.is_dir():
    raise ValueError(f"Dataset folder {root} does not exist (set manual_dir).")
  splits = {d: root / d for d in SPLIT_DIRS if (root / d).is_dir()}
  return splits or {"train": root}


def _read_captions_jsonl(path: pathlib.Path, split: str, skips: SkipLog) -> dict:
  captions = {}
  for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
    if not line.strip():
      continue
    try:
      entry = json.loads(line)
      captions[str(entry["file"])] = str(entry["caption"])
    except (ValueError, KeyError, TypeError) as e:
      skips.skip(split, f"{path.name}:{n}", "bad_caption_line", repr(e))
  return captions


def captioned_files(
  folder: str | pathlib.Path,
  extensions: Iterable[str],
  split: str,
  skips: SkipLog,
) -> list[tuple[str, pathlib.Path, str]]:
  """Sorted (relative path, path, caption) of the media files under `folder`.

  A caption comes from `folder/captions.jsonl` or a `.txt` beside the file;
  files with neither (or an empty caption) are skipped as 'missing_caption',
  and captions.jsonl lines naming no file are counted as 'missing_file'.
  """
  folder = pathlib.Path(folder)
  extensions = tuple(e.lower() for e in extensions)
  jsonl = folder / CAPTIONS_FILE
  captions = _read_captions_jsonl(jsonl, split, skips) if jsonl.is_file() else {}
  found = []
  for path in sorted(folder.rglob("*")):
    if not path.is_file() or path.suffix.lower() not in extensions:
      continue
    rel = path.relative_to(folder).as_posix()
    caption = captions.get(rel)
    txt = path.with_suffix(".txt")
    if caption is None and txt.is_file():
      caption = txt.read_text(encoding="utf-8", errors="replace")
    caption = (caption or "").strip()
    if caption:
      found.append((rel, path, caption))
    else:
      skips.skip(split, rel, "missing_caption")
  # A captions.jsonl line naming no media file here (moved, renamed, a typo).
  listed = {rel for rel, _, _ in found}
  for rel in sorted(set(captions) - listed):
    if not (folder / rel).is_file():
      skips.skip(split, f"{CAPTIONS_FILE}: {rel}", "missing_file")
  return found


def decode_video(
  path: str | pathlib.Path,
  *,
  fps: float,
  resolution: tuple[int, int],
  max_frames: int = 0,
  timeout_s: float = 600.0,
) -> np.ndarray:
  """Decodes a video with ffmpeg at `fps` and resolution (h, w).

  Frames are resampled in time by ffmpeg's fps filter, scaled (bilinear) to
  cover (h, w) with the aspect ratio kept, and centre-cropped.

  Returns:
    uint8 [T, h, w, 3]; T >= 1.

  Raises:
    ValueError: naming the file, when ffmpeg fails or gives no frame.
  """
  import imageio_ffmpeg

  h, w = resolution
  vf = (
    f"fps={fps},scale={w}:{h}:force_original_aspect_ratio=increase:flags=bilinear,"
    f"crop={w}:{h}"
  )
  cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(path)]
  cmd += ["-an", "-vf", vf] + (["-frames:v", str(max_frames)] if max_frames else [])
  cmd += ["-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]
  try:
    proc = subprocess.run(cmd, capture_output=True, timeout=timeout_s, check=False)
  except subprocess.TimeoutExpired as e:
    raise ValueError(f"ffmpeg timed out after {timeout_s} s on {path}.") from e
  frame_bytes = h * w * 3
  n = len(proc.stdout) // frame_bytes
  if proc.returncode != 0 or n == 0:
    err = proc.stderr.decode(errors="replace").strip()[-500:]
    raise ValueError(f"ffmpeg could not decode {path} (rc {proc.returncode}): {err}")
  return np.frombuffer(proc.stdout[: n * frame_bytes], np.uint8).reshape(n, h, w, 3)


def load_image(
  path: str | pathlib.Path, resolution: tuple[int, int] | None = None
) -> np.ndarray:
  """Loads an image as RGB uint8 [h, w, 3].

  With a resolution (h, w) the image is resized (antialiased bilinear) to
  cover it, aspect ratio kept, and centre-cropped.

  Raises:
    ValueError: naming the file, when it cannot be decoded.
  """
  try:
    with PIL.Image.open(path) as img:
      img = img.convert("RGB")
  except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as e:
    raise ValueError(f"Could not decode image {path}: {e}") from e
  if resolution is not None:
    h, w = resolution
    scale = max(h / img.height, w / img.width)
    size = (max(w, round(img.width * scale)), max(h, round(img.height * scale)))
    img = img.resize(size, PIL.Image.BILINEAR)
    left, top = (size[0] - w) // 2, (size[1] - h) // 2
    img = img.crop((left, top, left + w, top + h))
  return np.asarray(img, np.uint8)


class FolderBuilder:
  """What both folder builders do (mixed in before tfds' GeneratorBasedBuilder).

  array_record files by default, one split per sub-folder (`folder_splits`)
  and a `SkipLog` in `self._skips` that the subclass's
  `_generate_examples(split, folder)` fills.
  """

  def __init__(self, *, file_format=None, **kwargs):
    super().__init__(file_format=file_format or "array_record", **kwargs)

  def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
    self._skips = SkipLog()
    self.info.metadata.update(self._skips.as_metadata())
    splits = folder_splits(dl_manager.manual_dir)
    return {split: self._generate_examples(split, d) for split, d in splits.items()}
