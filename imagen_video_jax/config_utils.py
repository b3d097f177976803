"""Loading configs given as `path/to/stage.py:arg` (as absl's config_flags does)."""

import dataclasses
import importlib.util
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import ml_collections
from absl import logging
from ml_collections import config_flags

from imagen_video_jax.diffusion.losses import LOSSES

# The repository: its `configs` package is what the stage configs import.
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def importable_configs(config_file: str | None = None) -> None:
  """Puts the repository (and `config_file`'s grandparent) first on sys.path.

  Then `from configs import common` works in a config file whatever the
  working directory; a config of a copied `configs/` folder imports its own.
  """
  roots = [_REPO]
  if config_file is not None:
    roots.append(os.path.dirname(os.path.dirname(os.path.abspath(config_file))))
  for root in roots:
    if root not in sys.path:
      sys.path.insert(0, root)


def define_config_flag(help_string: str, *, lock_config: bool = True) -> Any:
  """Every binary's --config (absl's config_flags), loadable from any cwd."""
  importable_configs()
  return config_flags.DEFINE_config_file(
    "config", None, help_string, lock_config=lock_config
  )


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Loads `configs/base.py:demo,batch=8` -> the ConfigDict of `get_config(arg)`.

  The config file loads as the binaries' --config does (`importable_configs`),
  wherever the command is run from.
  """
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ValueError(f"Config file {path!r} (from {spec!r}) does not exist.")
  importable_configs(path)
  name = "_config_" + os.path.splitext(os.path.basename(path))[0]
  module_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


@dataclasses.dataclass(frozen=True)
class StageShape:
  """Frames x height x width at fps: a stage's output or input, or a source's clips.

  A stage may train on a crop of its frames ((h, w) `crop`) and on runs of
  `crop_frames` consecutive frames; it always samples at its full size.
  """

  frames: int  # 0 for an image source.
  height: int
  width: int
  fps: float
  crop: tuple[int, int] | None = None
  crop_frames: int | None = None

  @classmethod
  def of(cls, c: ml_collections.ConfigDict | None) -> "StageShape | None":
    """The shape `config.stage` or `config.stage.input` holds (None for None)."""
    if c is None:
      return None
    crop, crop_frames = c.get("crop"), c.get("crop_frames")
    return cls(
      int(c.frames),
      int(c.height),
      int(c.width),
      float(c.fps),
      None if crop is None else tuple(int(v) for v in crop),
      None if crop_frames is None else int(crop_frames),
    )

  @property
  def size(self) -> tuple[int, int, int]:
    """(frames, height, width) at full size, as a stage generates it."""
    return (self.frames, self.height, self.width)

  @property
  def train_frames(self) -> int:
    """Frames of a training example: crop_frames when training on runs."""
    return self.crop_frames or self.frames

  @property
  def train_hw(self) -> tuple[int, int]:
    """(height, width) of a training example: the crop's when cropping."""
    return self.crop or (self.height, self.width)

  def __str__(self) -> str:
    return "x".join(str(d) for d in self.size)


# Compute settings of a run (they change no parameter, so a resume may change
# them): config.dtype, the compute dtype of the U-Net and T5 (parameters stay
# float32); config.remat, what the backward pass recomputes: nothing, each U-Net
# block (nn.remat), or the whole loss (jax.checkpoint).
DTYPES = ("float32", "bfloat16")
REMATS = ("none", "block", "full")


def check_compute(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming config.dtype or config.remat if out of its list."""
  for key, allowed in (("dtype", DTYPES), ("remat", REMATS)):
    if config[key] not in allowed:
      raise ValueError(f"config.{key}={config[key]!r} must be one of {allowed}.")


# The keys of config.stage that make a stage: its name, its output's shape and
# frame rate, and its input's shape. A checkpoint records them, and a resume, a
# distillation or a sampler checks them (checkpointing.stage_identity).
# (stage.crop and crop_frames choose what a step sees: a resume may change them.)
STAGE_KEYS = ("name", "frames", "height", "width", "fps", "input")

# What fixes a workdir's parameters and their meaning: the network, the text
# encoder it was trained with, and the stage.
_NETWORK_KEYS = (("model", None), ("text", None), ("stage", STAGE_KEYS))


def network_differences(saved: dict, config: ml_collections.ConfigDict) -> list[str]:
  """The network keys on which a saved config.json and `config` differ.

  Args:
    saved: a workdir's config.json, as a dict.
    config: the config of the run that would resume it.

  Returns:
    'key: saved -> current' per differing key, sorted. A key the saved config
    lacks (newer than the workdir) is not compared.
  """
  current = json.loads(config.to_json())  # Tuples as lists, as in the JSON.
  out = []
  for section, keys in _NETWORK_KEYS:
    before, now = saved.get(section) or {}, current.get(section) or {}
    for key in keys or sorted(before.keys() | now.keys()):
      name = f"{section}.{key}"
      if key not in before:
        continue
      if before[key] != now.get(key):
        out.append(f"{name}: {before[key]!r} -> {now.get(key)!r}")
  return out


# What fixes the order of a run's data: its global batch at step s is a function
# of these and s alone (input_pipeline), so a resume may change the hosts, the
# devices, the mesh and with them the per-chip batch, but not these.
_DATA_ORDER_KEYS = ("batch_size", "seed")


def data_order_differences(saved: dict, config: ml_collections.ConfigDict) -> list[str]:
  """'key: saved -> current' per data-order key a saved config.json changes."""
  current = json.loads(config.to_json())
  return [
    f"{key}: {saved[key]!r} -> {current.get(key)!r}"
    for key in _DATA_ORDER_KEYS
    if key in saved and saved[key] != current.get(key)
  ]


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
  for part in key.split("."):
    config = config[part]
  return config


def check_run_config(
  config: ml_collections.ConfigDict, *, optim: str = "optim"
) -> None:
  """Checks the values a training run steers by, before anything is written.

  Args:
    config: a stage config (train.py) or a student's (distill.py).
    optim: the key of the optimizer config the run steps with
      ('distill.optim' for distill.py).

  Raises:
    ValueError: naming every key out of range, with its value and the range.
  """
  check_compute(config)
  errors = []

  def need(key: str, ok: Callable[[Any], bool], what: str) -> None:
    value = _get(config, key)
    if not isinstance(value, int | float) or isinstance(value, bool) or not ok(value):
      errors.append(f"config.{key}={value!r} must be {what}")

  for key in ("total_steps", "batch_size", "ckpt_every", "log_every", "keep_ckpts"):
    need(key, lambda v: v >= 1, ">= 1")
  need("max_bad_steps", lambda v: v >= 1, ">= 1")
  need(f"{optim}.learning_rate", lambda v: v > 0, "> 0")
  steps = config.total_steps
  need(
    f"{optim}.warmup_steps", lambda v: 0 <= v <= steps, f"in [0, total_steps={steps}]"
  )
  for key in ("b1", "b2"):
    need(f"{optim}.{key}", lambda v: 0 <= v < 1, "in [0, 1)")
  need(f"{optim}.decay_fraction", lambda v: 0 <= v <= 1, "in [0, 1]")
  for key in ("weight_decay", "grad_clip"):
    need(f"{optim}.{key}", lambda v: v >= 0, ">= 0 (0 = off)")
  need("ema_decay", lambda v: 0 <= v < 1, "in [0, 1)")
  need("diffusion.text_dropout", lambda v: 0 <= v <= 1, "in [0, 1]")
  d = config.diffusion
  need(
    "diffusion.logsnr_max", lambda v: v > d.logsnr_min, f"> logsnr_min={d.logsnr_min}"
  )
  need(
    "diffusion.aug_logsnr_max",
    lambda v: v >= d.aug_logsnr_min,
    f">= aug_logsnr_min={d.aug_logsnr_min}",
  )
  for key, allowed in (("loss", LOSSES), ("late_loss", ("", *LOSSES))):
    if d[key] not in allowed:
      errors.append(f"config.diffusion.{key}={d[key]!r} must be one of {allowed}")
  if d.late_loss:
    need(
      "diffusion.late_loss_from",
      lambda v: 0 <= v <= steps,
      f"in [0, total_steps={steps}] (late_loss={d.late_loss!r})",
    )
  for key in ("profile_steps", "data.prefetch", "data.worker_count"):
    need(key, lambda v: v >= 0, ">= 0")
  for name, weight in config.data.mixture.items():
    if not isinstance(weight, int | float) or not weight > 0:
      errors.append(f"config.data.mixture[{name!r}]={weight!r} must be > 0")
  if errors:
    raise ValueError("Bad config: " + "; ".join(errors) + ".")

  # Legal, but probably not what was meant.
  weights = dict(config.data.mixture)
  total = sum(weights.values())
  if abs(total - 1) > 1e-6:
    fractions = {k: round(v / total, 4) for k, v in weights.items()}
    logging.warning(
      "config.data.mixture weights sum to %g, not 1: renormalised to %s.",
      total,
      fractions,
    )
  if _get(config, f"{optim}.learning_rate") > 0.1:
    logging.warning(
      "config.%s.learning_rate=%g is far above Adam's usual 1e-5 to 1e-2.",
      optim,
      _get(config, f"{optim}.learning_rate"),
    )
