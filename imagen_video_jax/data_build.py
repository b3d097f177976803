"""Builds the project's TFDS datasets from Python (and from the command line).

The builders live in `data/<name>/<name>_dataset_builder.py` (the layout
`tfds build data/<name>` expects). The `tfds` CLI also imports apache-beam
and mlcroissant (not installed here); this module builds the same datasets
without them:

  python -m imagen_video_jax.data_build --dataset=bouncing_digits \
    --config=videos --data_dir=/tmp/tfds --kwargs='{"train_size": 64}'
  python -m imagen_video_jax.data_build --dataset=video_text_folder \
    --config='{"name": "clips32", "frames": 32, "fps": 12, "resolution": [48, 80]}' \
    --manual_dir=/path/to/videos --data_dir=/tmp/tfds

The folder datasets' helpers are `folder_data.py`.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from absl import app, flags

BUILDERS_DIR = pathlib.Path(__file__).resolve().parent.parent / "data"


def builder_class(name: str, builders_dir: str | pathlib.Path | None = None) -> type:
  """The TFDS builder class of `data/<name>/<name>_dataset_builder.py`."""
  import tensorflow_datasets as tfds  # Heavy; only when building.

  root = pathlib.Path(builders_dir or BUILDERS_DIR)
  if not (root / name / f"{name}_dataset_builder.py").is_file():
    raise ValueError(
      f"Unknown dataset {name!r}: no {name}_dataset_builder.py in {root}."
    )
  # As `tfds build data/<name>` does: import "<name>.<name>_dataset_builder"
  # from data/ without registering it under TFDS's global names.
  with tfds.core.utils.add_sys_path(root):
    return tfds.core.community.builder_cls_from_module(f"{name}.{name}_dataset_builder")


def build_dataset(
  name: str,
  data_dir: str | pathlib.Path,
  *,
  config: Any = None,
  manual_dir: str | pathlib.Path | None = None,
  **builder_kwargs: Any,
):
  """Builds (or reuses) a dataset and returns its TFDS builder.

  Args:
    name: builder folder under data/, e.g. 'bouncing_digits'.
    data_dir: TFDS data directory to write to.
    config: a config name ('videos'), a dict of config fields (a custom config,
      as `tfds build --config='{...}'`), a BuilderConfig, or None (the
      builder's first config).
    manual_dir: the source folder of folder datasets.
    **builder_kwargs: forwarded to the builder, e.g. train_size=8, test_size=4.

  Returns:
    The prepared `tfds.core.DatasetBuilder`; read it with
    `builder.as_data_source(split)`.
  """
  import tensorflow_datasets as tfds

  cls = builder_class(name)
  if isinstance(config, dict):
    config = cls.builder_config_cls(**config)
  elif isinstance(config, str) and config not in cls.builder_configs:
    raise ValueError(
      f"Unknown config {config!r} of {name}; expected one of "
      f"{sorted(cls.builder_configs)} or a dict of config fields."
    )
  builder = cls(config=config, data_dir=str(data_dir), **builder_kwargs)
  download_config = tfds.download.DownloadConfig(
    manual_dir=str(manual_dir) if manual_dir is not None else None
  )
  builder.download_and_prepare(download_config=download_config)
  return builder


# ----------------------------------------------------------------------------
# Command line.
# ----------------------------------------------------------------------------


def _define_flags() -> dict[str, flags.FlagHolder]:
  # Defined only when run as a script, so importing this module adds no flags.
  return {
    "dataset": flags.DEFINE_string("dataset", None, "Builder folder under data/."),
    "config": flags.DEFINE_string("config", None, "Config name, or JSON of fields."),
    "data_dir": flags.DEFINE_string("data_dir", None, "TFDS data directory."),
    "manual_dir": flags.DEFINE_string("manual_dir", None, "Folder of a folder set."),
    "kwargs": flags.DEFINE_string("kwargs", "{}", "JSON of builder kwargs."),
  }


def main(argv: list[str], args: dict[str, flags.FlagHolder]) -> None:
  del argv
  config = args["config"].value
  if config and config.lstrip().startswith("{"):
    config = json.loads(config)
  builder = build_dataset(
    args["dataset"].value,
    args["data_dir"].value,
    config=config,
    manual_dir=args["manual_dir"].value,
    **json.loads(args["kwargs"].value),
  )
  print(builder.info)


if __name__ == "__main__":
  _args = _define_flags()
  flags.mark_flags_as_required(["dataset", "data_dir"])
  app.run(lambda argv: main(argv, _args))
