"""Loading configs given as `path/to/stage.py:arg` (as absl's config_flags does)."""

import importlib.util
import json
import os
import sys

import ml_collections


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Loads `configs/base.py:demo,batch=8` -> the ConfigDict of `get_config(arg)`.

  The config file's parent folder goes on sys.path so that `from configs import
  common` works wherever the command is run from.
  """
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ValueError(f"Config file {path!r} (from {spec!r}) does not exist.")
  root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
  if root not in sys.path:
    sys.path.insert(0, root)
  name = "_config_" + os.path.splitext(os.path.basename(path))[0]
  module_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


# What fixes a workdir's parameters and their meaning: the network (not its
# compute dtype or remat, which change no parameter), the text encoder it was
# trained with, and the stage's shape and input. (stage.crop and crop_frames
# choose what a step sees, not the network: a resume may change them.)
_NETWORK_KEYS = (
  ("model", None),
  ("text", None),
  ("stage", ("name", "frames", "height", "width", "fps", "input")),
)
_NOT_NETWORK = ("model.dtype", "model.remat")


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
      if name in _NOT_NETWORK or key not in before:
        continue
      if before[key] != now.get(key):
        out.append(f"{name}: {before[key]!r} -> {now.get(key)!r}")
  return out
