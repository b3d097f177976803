"""Loading configs given as `path/to/stage.py:arg` (as absl's config_flags does)."""

import importlib.util
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
