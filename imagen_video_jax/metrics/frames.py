"""Per-frame-index statistics of videos: an odd frame stands out, whatever the data.

A clip-level score (an alignment vote, FVD) can hide one bad frame index, such
as an extrapolated last frame or the frames a temporal super-resolution stage
fills in. For each frame index k, over the N videos:

- intensity_k: the frame's mean pixel value over its video's median frame's
  (1 = a typical frame; a frame drawn brighter or darker moves it);
- neighbours_k: the frame's mean absolute distance to the mean of its
  neighbours (k - 1 and k + 1; one at the ends), over its video's median such
  distance (1 = as smooth as the rest; a frame that breaks the motion, or a
  blurred one, moves it, and by half as much its neighbours).

Medians, not means, so that one odd frame does not shift every other index.

Compared with the same on the reference videos (the ground truth), the
deviation per index is the fault; `worst` is the largest |value - reference|.
"""

from __future__ import annotations

import numpy as np

STATS = ("intensity", "neighbours")


def profile(videos: np.ndarray) -> dict[str, np.ndarray]:
  """Per-frame-index means over the videos of each of STATS.

  Args:
    videos: uint8 [N, T, H, W, C], T >= 2.

  Returns:
    {stat: float64 [T]}.
  """
  if videos.ndim != 5 or videos.shape[1] < 2:
    raise ValueError(f"videos must be [N, T >= 2, H, W, C]; got {videos.shape}.")
  x = videos.astype(np.float64) / 255.0
  # Over the video's median frame: one odd frame does not move the others.
  mean = x.mean(axis=(2, 3, 4))  # [N, T]
  intensity = mean / np.maximum(np.median(mean, axis=1, keepdims=True), 1e-6)
  padded = np.concatenate([x[:, 1:2], x, x[:, -2:-1]], axis=1)  # Ends: one side.
  between = 0.5 * (padded[:, :-2] + padded[:, 2:])
  dist = np.abs(x - between).mean(axis=(2, 3, 4))  # [N, T]
  neighbours = dist / np.maximum(np.median(dist, axis=1, keepdims=True), 1e-6)
  return {
    "intensity": intensity.mean(axis=0),
    "neighbours": neighbours.mean(axis=0),
  }


def rows(
  videos: np.ndarray, reference: np.ndarray | None = None
) -> dict[str, dict[str, float]]:
  """evaluate's rows: 'frames/{stat}/{k}' per index and 'frames/{stat}/worst'.

  Args:
    videos: uint8 [N, T, H, W, C] samples.
    reference: uint8 [M, T, H, W, C] ground truth at the same T, or None
      (then `worst` is against 1, a perfectly even video).

  Returns:
    {row: {'samples': x[, 'ground_truth': y]}}; `worst` is the largest
    |sample - reference| over the indices (its ground truth: the largest
    |reference - 1|, the data's own unevenness).
  """
  ours = profile(videos)
  truth = profile(reference) if reference is not None else None
  out: dict[str, dict[str, float]] = {}
  for stat in STATS:
    target = truth[stat] if truth is not None else np.ones_like(ours[stat])
    for k, value in enumerate(ours[stat]):
      out[f"frames/{stat}/{k}"] = {"samples": float(value)}
      if truth is not None:
        out[f"frames/{stat}/{k}"]["ground_truth"] = float(truth[stat][k])
    out[f"frames/{stat}/worst"] = {
      "samples": float(np.max(np.abs(ours[stat] - target)))
    }
    if truth is not None:
      out[f"frames/{stat}/worst"]["ground_truth"] = float(
        np.max(np.abs(truth[stat] - 1.0))
      )
  return out
