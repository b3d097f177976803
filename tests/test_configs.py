"""Stage configs load for every variant and reject unknown options."""

import ast
import math
import pathlib
import re

import pytest
from absl import flags
from ml_collections import config_flags

from configs import common
from imagen_video_jax import config_utils
from imagen_video_jax.models import stage_model


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
  with pytest.raises(ValueError, match=r"option batch='abc' in 'demo,batch=abc'.*int"):
    config_utils.load_config("configs/base.py:demo,batch=abc")


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


def _flag_config(*overrides):
  argv = ["prog", "--config=configs/base.py:demo", *overrides]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=fv, sys_argv=argv)
  fv(argv)
  return fv.config


def test_stage_shape_reads_the_table_and_the_training_crop():
  config = config_utils.load_config("configs/ssr1.py:demo")
  shape = config_utils.StageShape.of(config.stage)
  # STAGE_SHAPES["demo"]["ssr1"] and ssr1's demo recipe (16x16 crops, 4-frame runs).
  assert (shape.size, shape.fps) == ((16, 32, 32), 8.0)
  assert (shape.train_frames, shape.train_hw) == (4, (16, 16))
  assert str(shape) == "16x32x32"
  source = config_utils.StageShape.of(config.stage.input)
  assert (source.size, source.fps, source.crop) == ((16, 16, 16), 8.0, None)
  assert (source.train_frames, source.train_hw) == (16, (16, 16))
  tsr1 = config_utils.StageShape.of(
    config_utils.load_config("configs/tsr1.py:demo").stage
  )
  assert (tsr1.train_frames, tsr1.train_hw) == (4, (16, 16))  # 4-frame runs, no crop.
  assert (
    config_utils.StageShape.of(
      config_utils.load_config("configs/base.py:demo").stage.input
    )
    is None
  )
  with pytest.raises(ValueError, match="Unknown stage 'tsr9'"):
    common.stage_shapes("tsr9", "demo")


def test_dtype_and_remat_are_one_key_each_and_checked():
  """config.dtype and config.remat reach the model; model.dtype is no key."""
  config = _flag_config("--config.dtype=bfloat16", "--config.remat=full")
  model = stage_model.make_model(config)
  assert (model.dtype, model.remat) == ("bfloat16", True)
  assert not stage_model.make_model(_flag_config()).remat
  with pytest.raises(AttributeError, match="dtype"):  # Not a key of config.model.
    _flag_config("--config.model.dtype=bfloat16")
  for key, value in (("dtype", "float16"), ("remat", "some")):
    config = _flag_config(f"--config.{key}={value}")
    with pytest.raises(ValueError, match=rf"config.{key}='{value}' must be one of"):
      stage_model.make_model(config)
    with pytest.raises(ValueError, match=rf"config.{key}='{value}' must be one of"):
      config_utils.check_run_config(config)


@pytest.mark.parametrize("stage", common.STAGES)
@pytest.mark.parametrize("variant", ["paper", "demo", "runlocal"])
def test_every_stage_config_passes_the_run_checks(stage, variant):
  config_utils.check_run_config(
    config_utils.load_config(f"configs/{stage}.py:{variant}")
  )


@pytest.mark.parametrize(
  "key, value, message",
  [
    ("optim.learning_rate", -1e-3, r"optim.learning_rate=-0.001 must be > 0"),
    ("total_steps", 0, r"total_steps=0 must be >= 1"),
    ("batch_size", 0, r"batch_size=0 must be >= 1"),
    ("ckpt_every", -5, r"ckpt_every=-5 must be >= 1"),
    (
      "optim.warmup_steps",
      5000,
      r"warmup_steps=5000 must be in \[0, total_steps=2000\]",
    ),
    ("diffusion.text_dropout", 1.5, r"text_dropout=1.5 must be in \[0, 1\]"),
    ("ema_decay", 1.0, r"ema_decay=1.0 must be in \[0, 1\)"),
    ("max_bad_steps", 0, r"max_bad_steps=0 must be >= 1"),
    ("diffusion.loss", "l1", r"diffusion.loss='l1' must be one of \('v_mse'"),
    ("diffusion.late_loss", "min-snr", r"late_loss='min-snr' must be one of \('', "),
  ],
)
def test_a_bad_run_value_is_named(key, value, message):
  config = config_utils.load_config("configs/base.py:runlocal")
  section, _, name = key.rpartition(".")
  (config[section] if section else config)[name] = value
  with pytest.raises(ValueError, match=message):
    config_utils.check_run_config(config)


def test_a_late_loss_needs_its_step_in_the_run():
  config = config_utils.load_config("configs/base.py:runlocal")
  config.diffusion.late_loss_from = 10**6  # Ignored without a late_loss.
  config_utils.check_run_config(config)
  config.diffusion.late_loss = "min_snr"
  with pytest.raises(ValueError, match=r"late_loss_from=1000000 must be in \[0, total"):
    config_utils.check_run_config(config)


def test_mixture_weights_not_summing_to_one_are_renormalised_with_a_warning(caplog):
  config = config_utils.load_config("configs/base.py:runlocal")
  config.data.mixture["bouncing_digits/videos"] = 3.0
  config.data.mixture["bouncing_digits/images"] = 1.0
  with caplog.at_level("WARNING"):
    config_utils.check_run_config(config)
  assert "sum to 4, not 1: renormalised to" in caplog.text
  assert "'bouncing_digits/videos': 0.75" in caplog.text
  config.data.mixture["bouncing_digits/images"] = 0.0
  with pytest.raises(ValueError, match=r"mixture\['bouncing_digits/images'\]=0.0"):
    config_utils.check_run_config(config)


# Paper Fig. 6: each stage's output (frames, width, height, fps) and its input.
PAPER_FIG6 = {
  "base": ((16, 40, 24, 3), None),
  "tsr1": ((32, 40, 24, 6), "base"),
  "ssr1": ((32, 80, 48, 6), "tsr1"),
  "ssr2": ((32, 320, 192, 6), "ssr1"),
  "tsr2": ((64, 320, 192, 12), "ssr2"),
  "tsr3": ((128, 320, 192, 24), "tsr2"),
  "ssr3": ((128, 1280, 768, 24), "tsr3"),
}


@pytest.mark.parametrize("stage", common.STAGES)
def test_the_paper_variant_holds_the_papers_figures(stage):
  """The paper's values, written once in common.py, reach every paper stage."""
  c = config_utils.load_config(f"configs/{stage}.py:paper")
  dims, source = PAPER_FIG6[stage]
  assert (c.stage.frames, c.stage.width, c.stage.height, c.stage.fps) == dims
  if source is None:
    assert c.stage.input is None
  else:
    i = c.stage.input
    assert i.name == source
    assert (i.frames, i.width, i.height, i.fps) == PAPER_FIG6[source][0]
  assert c.text.t5_size == "xxl"  # T5-XXL encoder (Sec. 2).
  assert c.diffusion.parameterization == "v"  # Sec. 2.4.
  assert c.diffusion.text_dropout == 0.1  # Sec. 2.6.1, ~10%.
  assert (c.diffusion.logsnr_min, c.diffusion.logsnr_max) == (-20.0, 20.0)
  assert (c.dtype, c.remat, tuple(c.mesh.shape)) == ("bfloat16", "block", (1, -1, 1))
  # Sec. 2.7: the undistilled cascade's 256 base / 128 SR steps halve to 8.
  assert c.distill.start_sampling_steps == (256 if stage == "base" else 128)
  assert c.distill.final_sampling_steps == 8
  assert c.stage.crop == ((192, 320) if stage == "ssr3" else None)


def test_the_paper_cascade_samples_as_the_paper_says():
  c = config_utils.load_config("configs/cascade.py:paper")
  assert tuple(c.order) == common.STAGES
  for name in common.STAGES:
    s = c.stages[name]
    assert s.config == f"configs/{name}.py:paper"
    assert s.steps == (256 if name == "base" else 128)  # Sec. 2.7.
    assert s.sampler == "ancestral" and not s.distilled
    g = s.guidance
    if name in ("base", "tsr1", "ssr1"):  # Sec. 2.6.2: oscillating 15/1, dynamic.
      assert (g.kind, g.high, g.low, s.thresholding) == (
        "oscillating",
        15.0,
        1.0,
        "dynamic",
      )
    else:
      assert (g.kind, g.w) == ("constant", 1.0)
    # Sec. 2.5: the conditioning sampled at a fixed SNR of 3.
    assert s.aug_logsnr == (None if name == "base" else pytest.approx(math.log(3.0)))
  students = config_utils.load_config("configs/cascade.py:paper,distilled=all")
  assert {s.steps for s in students.stages.values()} == {8}


@pytest.mark.parametrize("name", [*common.STAGES, "cascade"])
def test_each_config_docstring_gives_commands_that_load(name):
  """Every `--config=configs/...` in a config's docstring loads; its binary exists."""
  path = f"configs/{name}.py"
  root = pathlib.Path(__file__).parent.parent
  doc = ast.get_docstring(ast.parse((root / path).read_text()))
  binaries = re.findall(r"python -m (imagen_video_jax\.\w+)", doc)
  assert binaries, f"{path}'s docstring gives no launch command"
  for binary in binaries:
    assert (root / (binary.replace(".", "/") + ".py")).is_file(), binary
  specs = re.findall(r"--config=(configs/\S+)", doc)
  if name != "cascade":
    assert f"configs/{name}.py:paper" in specs and f"configs/{name}.py:demo" in specs
    assert f"--stage={name} " in doc  # launch/tpu.sh's --stage.
  for spec in specs:
    config_utils.load_config(spec)
