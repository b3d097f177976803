"""Stage configs load for every variant and reject unknown options."""

import pytest
from absl import flags
from ml_collections import config_flags

from configs import common
from imagen_video_jax import config_utils


@pytest.mark.parametrize("stage", common.STAGES)
@pytest.mark.parametrize("variant", ["paper", "demo", "runlocal"])
def test_every_stage_config_loads(stage, variant):
  config = config_utils.load_config(f"configs/{stage}.py:{variant}")
  assert config.stage.name == stage
  assert (config.stage.input is None) == (stage == "base")
  assert config.model.cond_channels == (0 if stage == "base" else 3)


def test_options_override_and_unknown_key_is_an_error():
  config = config_utils.load_config("configs/base.py:paper,batch=512")
  assert config.batch_size == 512
  with pytest.raises(ValueError, match="bogus"):
    config_utils.load_config("configs/base.py:paper,bogus=1")
  with pytest.raises(ValueError, match="nonsense"):
    config_utils.load_config("configs/base.py:nonsense")


def test_missing_config_file_is_named():
  with pytest.raises(ValueError, match="nope.py"):
    config_utils.load_config("configs/nope.py:demo")


def test_crop_can_be_set_from_the_command_line():
  """A stage without a crop takes one from a flag, as the SR demos set one."""
  argv = [
    "prog",
    "--config=configs/base.py:demo",
    "--config.stage.crop=(8, 8)",
    "--config.stage.crop_frames=4",
  ]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=fv, sys_argv=argv)
  fv(argv)
  assert tuple(fv.config.stage.crop) == (8, 8)
  assert fv.config.stage.crop_frames == 4
  base = config_utils.load_config("configs/base.py:demo")
  assert base.stage.crop is None and base.stage.crop_frames is None
