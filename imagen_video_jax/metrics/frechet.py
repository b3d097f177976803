"""The Fréchet distance of two feature sets, and a model mapped over batches.

FID (Heusel et al., 2017) and FVD (Unterthiner et al., 2018) are both the
Fréchet distance between Gaussians fitted to a network's features of two sets
(`fid.py`: InceptionV3 frames; `fvd.py`: I3D clips); `map_batches` runs that
network over a set, data parallel over the local devices.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

from imagen_video_jax import sharding


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean [D] and unbiased covariance [D, D] (float64) of features [N, D]."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or len(features) < 2:
    raise ValueError(f"features must be [N >= 2, D]; got shape {features.shape}.")
  return features.mean(axis=0), np.cov(features, rowvar=False)


def _clip_eigenvalues(w: np.ndarray) -> np.ndarray:
  """Zeroes eigenvalues of a PSD matrix below its rounding noise (negative ones too)."""
  tol = max(w.max(initial=0.0), 0.0) * len(w) * np.finfo(np.float64).eps
  return np.where(w > tol, w, 0.0)


def frechet_distance(
  mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
  """Squared Fréchet (2-Wasserstein) distance between two Gaussians.

  Heusel et al. 2017, Eq. 6: d^2 = |mu1 - mu2|^2
  + Tr(S1 + S2 - 2 (S1 S2)^(1/2)). The trace of the square root is taken in
  the symmetric form Tr((S1^(1/2) S2 S1^(1/2))^(1/2)) (same eigenvalues as
  S1 S2) with eigh and clipped eigenvalues, which stays real and finite for
  the singular covariances of fewer samples than dimensions.

  Args:
    mu1: [D] mean. sigma1: [D, D] covariance. mu2, sigma2: the other Gaussian.

  Returns:
    The distance (>= 0 up to rounding).
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
    raise ValueError(
      f"Mismatched Gaussians: mu {mu1.shape} vs {mu2.shape}, "
      f"sigma {s1.shape} vs {s2.shape}."
    )
  w, v = np.linalg.eigh((s1 + s1.T) / 2)
  root1 = (v * np.sqrt(_clip_eigenvalues(w))) @ v.T  # S1^(1/2).
  inner = root1 @ s2 @ root1
  tr_sqrt = np.sqrt(_clip_eigenvalues(np.linalg.eigvalsh((inner + inner.T) / 2))).sum()
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt)


def feature_distance(features1: np.ndarray, features2: np.ndarray) -> float:
  """Fréchet distance between Gaussians fitted to two feature sets [N, D]."""
  return frechet_distance(*gaussian_stats(features1), *gaussian_stats(features2))


# ----------------------------------------------------------------------------
# InceptionV3 (FID variant).
# ----------------------------------------------------------------------------


def map_batches(
  fn: Callable[[dict, jax.Array], jax.Array],
  variables: dict,
  x: np.ndarray,
  batch_size: int,
) -> np.ndarray:
  """fn(variables, batch) over `x` [N, ...] in batches -> float64 [N, ...].

  Each batch is split over as many local devices as divide it (data parallel,
  every chip of a GPU or TPU host); the last batch is padded so that every call
  has one compiled shape.
  """
  batch_size = min(batch_size, len(x))
  devices = jax.local_devices()
  n = max(d for d in range(1, len(devices) + 1) if batch_size % d == 0)
  mesh = sharding.make_mesh((-1, 1, 1), devices[:n])
  split = sharding.batch_sharding(mesh)
  variables = jax.device_put(variables, jax.NamedSharding(mesh, jax.P()))
  out = []
  for i in range(0, len(x), batch_size):
    chunk = x[i : i + batch_size]
    pad = batch_size - len(chunk)
    chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
    y = fn(variables, jax.device_put(chunk, split))
    out.append(np.asarray(y, np.float64)[: batch_size - pad])
  return np.concatenate(out)
