"""Prompt alignment of bouncing-digits videos: digit, colour and motion axis.

The judge of docs/BOUNCING_DIGITS.md ("What correct means"). A video
matches its prompt "the {colour} digit {d} is moving {axis}" when

- digit: a classifier fitted on glyph crops of *train*-split videos only
  (rendered, then taken to the evaluated frames and resolution by the same path
  as the stages' data) recognises `d` in the frames;
- colour: the palette colour nearest to the mean foreground colour, after
  dividing by its largest channel (a glyph's pixels are intensity x RGB, so the
  direction of the colour is what identifies it), is `colour`;
- axis: the glyph's intensity-weighted centroid moves more along `axis` than
  along the other one, and by at least MIN_MOTION of the frame side (a glyph
  that does not move, or a frame with no foreground, fails).

The digit crops are taken at the centroid with a window of half the frame side
(the 24-pixel glyph plus the centroid's offset from the glyph's centre fits in
32 of 64 pixels) and resampled bilinearly to CROP x CROP, so one classifier
serves 16, 32 or 64 pixel frames once fitted at that resolution.
"""

from __future__ import annotations

import functools
import re

import numpy as np
from scipy import ndimage
from sklearn import svm

from imagen_video_jax import bouncing_digits as bd
from imagen_video_jax import video_io

FG_THRESHOLD = 0.2  # Foreground: max channel > 0.2 of full scale.
MIN_MOTION = 0.05  # A glyph must move by >= 5% of the frame side.
CROP = 16  # Canonical crop side fed to the digit classifier.
WINDOW = 0.5  # Crop window side as a fraction of the frame side.
PARTS = ("digit", "colour", "axis")

_PROMPT_RE = re.compile(r"the (\w+) digit (\d) is (moving [a-z ]+)")


def parse_prompt(prompt: str) -> tuple[str, int, str]:
  """Splits a bouncing-digits video caption into (colour, digit, axis).

  Raises:
    ValueError naming the prompt if it is not exactly a caption of the
    dataset's grammar (checked by re-rendering it with `video_caption`).
  """
  m = _PROMPT_RE.fullmatch(prompt.strip())
  if m:
    colour, digit = m.group(1), int(m.group(2))
    for axis in bd.AXES:
      if colour in bd.COLOURS and bd.video_caption(colour, digit, axis) == m.group(0):
        return colour, digit, axis
  raise ValueError(
    f"Prompt {prompt!r} is not a bouncing-digits caption "
    "('the {colour} digit {d} is moving left and right|up and down')."
  )


def to_resolution(
  videos: np.ndarray, frames: int, height: int, width: int
) -> np.ndarray:
  """Takes videos to a stage's frames and resolution, as the stages' data.

  Temporal: frame skipping (every (T / frames)-th frame). Spatial: antialiased
  bilinear resizing with the input pipeline's `resize` (docs/BOUNCING_DIGITS.md,
  "How stages see it").

  Args:
    videos: uint8 [N, T, H, W, 3].
    frames: output frames; T must be a multiple of it.
    height: output height.
    width: output width.

  Returns:
    uint8 [N, frames, height, width, 3].
  """
  t = videos.shape[1]
  if frames <= 0 or t % frames:
    raise ValueError(f"Cannot take {t} frames to {frames} by frame skipping.")
  videos = videos[:, :: t // frames]
  return np.stack([video_io.resize(v, height, width) for v in videos])


def reference_videos(
  split: str, num: int, frames: int, height: int, width: int, seed: int = 0
) -> tuple[np.ndarray, list[str]]:
  """The first `num` videos of a split at a stage's resolution, with captions.

  Returns:
    (videos uint8 [num, frames, height, width, 3], captions list of num str).
  """
  examples = [bd.render_video(split, i, seed) for i in range(num)]
  videos = np.stack([e["video"] for e in examples])
  return to_resolution(videos, frames, height, width), [e["caption"] for e in examples]


def _intensity(videos: np.ndarray) -> np.ndarray:
  """Max-channel intensity float32 [N, T, H, W] in [0, 1]."""
  return videos.max(axis=-1).astype(np.float32) / 255.0


def centroids(videos: np.ndarray) -> np.ndarray:
  """Foreground centroids (x, y) float64 [N, T, 2] in pixels; NaN if empty.

  The centroid is the intensity-weighted mean position of the pixels whose
  intensity exceeds FG_THRESHOLD.
  """
  inten = _intensity(videos)
  weight = np.where(inten > FG_THRESHOLD, inten, 0.0).astype(np.float64)
  total = weight.sum(axis=(2, 3))
  ys, xs = np.arange(videos.shape[2]), np.arange(videos.shape[3])
  with np.errstate(invalid="ignore", divide="ignore"):
    cx = (weight.sum(axis=2) * xs).sum(axis=-1) / total
    cy = (weight.sum(axis=3) * ys).sum(axis=-1) / total
  return np.stack([cx, cy], axis=-1)


def crops(videos: np.ndarray, cents: np.ndarray) -> np.ndarray:
  """Glyph crops float32 [N, T, CROP * CROP], each scaled to max 1.

  A WINDOW x side square centred on each frame's centroid, resampled
  bilinearly to CROP x CROP (zeros outside the frame and for empty frames).
  """
  n, t, h, w, _ = videos.shape
  inten = _intensity(videos)
  offsets = (np.arange(CROP) + 0.5) / CROP - 0.5
  out = np.zeros((n, t, CROP * CROP), np.float32)
  for i in range(n):
    for f in range(t):
      cx, cy = cents[i, f]
      if not np.isfinite(cx):
        continue
      yy, xx = np.meshgrid(
        cy + offsets * WINDOW * h, cx + offsets * WINDOW * w, indexing="ij"
      )
      crop = ndimage.map_coordinates(inten[i, f], [yy, xx], order=1, cval=0.0)
      out[i, f] = crop.ravel() / max(crop.max(), 1e-6)
  return out


@functools.cache
def digit_classifier(
  frames: int, height: int, width: int, num_videos: int = 400, seed: int = 0
) -> svm.SVC:
  """RBF support-vector digit classifier on crops of train-split videos.

  Fitted only on the train glyph pool, rendered and taken to (frames, height,
  width) with `to_resolution`, every frame one training crop (the positions
  and sub-pixel phases of the bounce augment the glyphs). Cached per shape.
  """
  videos, captions = reference_videos("train", num_videos, frames, height, width, seed)
  digits = np.array([parse_prompt(c)[1] for c in captions])
  x = crops(videos, centroids(videos)).reshape(-1, CROP * CROP)
  y = np.repeat(digits, frames)
  return svm.SVC(C=10.0, gamma="scale").fit(x, y)


def judge(videos: np.ndarray) -> dict[str, list]:
  """Reads digit, colour and axis off each video.

  Args:
    videos: uint8 [N, T, H, W, 3].

  Returns:
    dict of lists of N: 'digit' int (-1: no foreground), 'colour' str | None,
    'axis' str | None (None: no foreground in some frame, or no motion),
    'consistency' float in [0, 1] (frames whose digit is the majority's),
    'frame_digit' int [T] per video (each frame's own digit, -1: empty).
  """
  if videos.ndim != 5 or videos.shape[-1] != 3 or videos.dtype != np.uint8:
    raise ValueError(
      f"videos must be uint8 [N, T, H, W, 3]; got {videos.dtype} {videos.shape}."
    )
  n, t, h, w, _ = videos.shape
  cents = centroids(videos)
  valid = np.isfinite(cents[..., 0])
  # Digit: one-vs-rest SVM scores summed over the frames with a foreground.
  clf = digit_classifier(t, h, w)
  score = clf.decision_function(crops(videos, cents).reshape(n * t, -1))
  score = score.reshape(n, t, -1)
  per_frame = np.where(valid, clf.classes_[score.argmax(-1)], -1)  # [N, T].
  score = (score * valid[..., None]).sum(axis=1)
  digit = np.where(valid.any(axis=1), clf.classes_[score.argmax(-1)], -1)
  # Consistency: the fraction of frames whose own digit is the video's
  # majority digit (a frame without foreground never agrees).
  consistency = []
  for frames in per_frame:
    shown = frames[frames >= 0]
    majority = np.bincount(shown).argmax() if shown.size else -1
    consistency.append(float(np.mean(frames == majority)) if shown.size else 0.0)
  # Colour: nearest palette colour to the max-normalised mean foreground colour.
  palette = np.array(list(bd.PALETTE.values()), np.float64) / 255.0
  fg = _intensity(videos) > FG_THRESHOLD
  colours, axes = [], []
  for i in range(n):
    if not fg[i].any():
      colours.append(None)
    else:
      mean = videos[i][fg[i]].astype(np.float64).mean(axis=0)
      mean /= max(mean.max(), 1e-6)
      colours.append(bd.COLOURS[int(np.argmin(((palette - mean) ** 2).sum(-1)))])
    # Axis: the centroid's range of motion along x (horizontal) and y (vertical).
    if not valid[i].all():
      axes.append(None)
      continue
    motion = cents[i].max(axis=0) - cents[i].min(axis=0)
    moved = motion / np.array([w, h]) >= MIN_MOTION
    axes.append(bd.AXES[int(np.argmax(motion))] if moved.any() else None)
  return {
    "digit": [int(d) for d in digit],
    "colour": colours,
    "axis": axes,
    "consistency": consistency,
    "frame_digit": per_frame.astype(int).tolist(),
  }


def alignment(videos: np.ndarray, prompts: list[str]) -> dict[str, float]:
  """Fraction of videos matching their prompt: all three parts and each alone.

  Args:
    videos: uint8 [N, T, H, W, 3].
    prompts: N bouncing-digits captions.

  Returns:
    {'all', 'digit', 'colour', 'axis'} -> fraction in [0, 1], and
    'consistency', the mean fraction of a video's frames showing its majority
    digit (ground truth about 1).
  """
  return alignment_and_frames(videos, prompts)[0]


def alignment_and_frames(
  videos: np.ndarray, prompts: list[str]
) -> tuple[dict[str, float], np.ndarray]:
  """`alignment`'s scores, and each frame index's digit accuracy alone.

  The clip's digit is a vote of its frames, which hides a frame index that is
  often wrong (an extrapolated last frame, the frames a TSR stage fills in):
  the second output judges every frame by itself.

  Returns:
    (scores, frame_digit float [T]: the fraction of videos whose frame k
    alone shows the prompt's digit).
  """
  if len(prompts) != len(videos):
    raise ValueError(f"{len(prompts)} prompts for {len(videos)} videos.")
  wanted = [dict(zip(("colour", "digit", "axis"), parse_prompt(p))) for p in prompts]
  seen = judge(videos)
  hits = {
    part: np.array([w[part] == s for w, s in zip(wanted, seen[part])]) for part in PARTS
  }
  scores = {"all": float(np.mean(hits["digit"] & hits["colour"] & hits["axis"]))}
  scores.update({part: float(np.mean(h)) for part, h in hits.items()})
  scores["consistency"] = float(np.mean(seen["consistency"]))
  digits = np.array([w["digit"] for w in wanted])
  frame_digit = (np.array(seen["frame_digit"]) == digits[:, None]).mean(axis=0)
  return scores, frame_digit
