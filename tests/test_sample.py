"""Tests of the cascade sampling binary, its stage checks and its inputs."""

import json
import os
import shutil
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image
from test_checkpointing import damage
from test_train import xla_flags

from configs import common
from imagen_video_jax import checkpointing, config_utils, sample, video_io
from imagen_video_jax.cascade import inputs, outputs, pipeline, stages
from imagen_video_jax.models import stage_model, t5, tokenizers, video_unet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _NoData:
  """The data iterator a checkpoint records (none here)."""

  def get_state(self):
    return {}


def _random_variables(config, seed):
  """Random params of the stage's VideoUNet (shapes from eval_shape, N(0, 0.05))."""
  s = config.stage
  z = jnp.zeros((1, s.frames, s.height, s.width, 3))
  kw = {} if s.input is None else dict(cond_video=z, aug_logsnr=jnp.zeros((1,)))
  shapes = jax.eval_shape(
    video_unet.VideoUNet(**config.model).init,
    jax.random.key(0),
    z,
    jnp.zeros((1,)),
    jnp.zeros((1, 4, t5.t5_config(config.text.t5_size).d_model)),
    jnp.ones((1, 4), bool),
    **kw,
  )
  rng = np.random.RandomState(seed)
  return jax.tree.map(
    lambda x: (0.05 * rng.standard_normal(x.shape)).astype(x.dtype),
    flax.core.meta.unbox(shapes),
  )


@pytest.fixture(scope="session")
def runlocal_root(tmp_path_factory):
  """A workdir root with an EMA checkpoint for each of the seven runlocal stages,
  saved through the trainer's checkpointing API."""
  root = tmp_path_factory.mktemp("runs")
  save_runlocal_checkpoints(root)
  return root


def save_runlocal_checkpoints(root):
  """Saves random EMA params of every runlocal stage under root/NAME."""
  for i, name in enumerate(common.STAGES):
    config = config_utils.load_config(f"configs/{name}.py:runlocal")
    workdir = str(root / name)
    checkpointing.prepare_workdir(workdir, config)
    params = _random_variables(config, i)["params"]  # As train.py saves them.
    ckpt = checkpointing.Checkpointer(
      workdir, stage=checkpointing.stage_identity(config), async_save=False
    )
    state = dict(
      params=params, opt_state={"count": np.zeros(())}, ema_params=params, step=0
    )
    assert ckpt.save(1, state, _NoData())
    ckpt.close()


def _cascade(root, **stage_overrides):
  """The runlocal cascade with checkpoints under `root`."""
  cascade = config_utils.load_config("configs/cascade.py:runlocal")
  cascade.workdir_root = str(root)
  for key, value in stage_overrides.items():
    name, field = key.split("__")
    cascade.stages[name][field] = value
  return cascade


@pytest.fixture
def prompt_file(tmp_path):
  path = tmp_path / "prompts.txt"
  path.write_text("# a comment\na red 3 moving up\n\nblue 7 moving left\n")
  return str(path)


# --------------------------------------------------------------------------- #
# Stage selection and chain checks.
# --------------------------------------------------------------------------- #
def test_select_stages():
  order = common.STAGES
  assert stages.select_stages(order, "") == order
  assert stages.select_stages(order, "base,tsr1") == ("base", "tsr1")
  assert stages.select_stages(order, "tsr1:ssr2") == ("tsr1", "ssr1", "ssr2")
  assert stages.select_stages(order, "tsr3:") == ("tsr3", "ssr3")
  assert stages.select_stages(order, ":tsr1") == ("base", "tsr1")
  with pytest.raises(ValueError, match="contiguous"):
    stages.select_stages(order, "base,ssr1")
  with pytest.raises(ValueError, match="'nope'"):
    stages.select_stages(order, "base:nope")
  with pytest.raises(ValueError, match="comes after"):
    stages.select_stages(order, "ssr1:base")


def _configs(*specs):
  return [config_utils.load_config(f"configs/{s}") for s in specs]


def test_chain_check_names_both_stages_and_shapes():
  configs = _configs("base.py:demo", "tsr1.py:runlocal")
  with pytest.raises(
    ValueError, match=r"'base' outputs 8x16x16 .*'tsr1' expects input 2x8x8"
  ):
    stages.check_chain(["base", "tsr1"], configs)
  with pytest.raises(ValueError, match="'tsr1' needs an input video"):
    stages.check_chain(["tsr1"], _configs("tsr1.py:demo"))
  with pytest.raises(ValueError, match="'base' is a base stage"):
    stages.check_chain(["base"], _configs("base.py:demo"), from_video=True)
  stages.check_chain(["tsr1"], _configs("tsr1.py:demo"), from_video=True)


@pytest.mark.parametrize("variant", ["paper", "demo,ssr2=True", "runlocal"])
def test_cascade_configs_chain(variant):
  cascade = config_utils.load_config(f"configs/cascade.py:{variant}")
  configs = _configs(*(cascade.stages[n].config.split("/")[-1] for n in cascade.order))
  stages.check_chain(cascade.order, configs)
  stages.check_text(cascade.order, configs)
  augs = [cascade.stages[n].get("aug_logsnr") for n in cascade.order]
  stages.check_augmentation(cascade.order, configs, augs)


def test_augmentation_check_names_stage_and_range():
  configs = _configs("base.py:demo", "tsr1.py:demo")
  stages.check_augmentation(["base", "tsr1"], configs, [None, 4.0])
  with pytest.raises(ValueError, match=r"'tsr1'.*aug_logsnr=1 .*\[2, 20\]"):
    stages.check_augmentation(["base", "tsr1"], configs, [None, 1.0])
  with pytest.raises(ValueError, match="SR stage 'tsr1' needs"):
    stages.check_augmentation(["base", "tsr1"], configs, [None, None])


def test_conditioning_check_names_stage_and_key():
  base, tsr1 = _configs("base.py:demo", "tsr1.py:demo")
  for name, cfg in (("base", base), ("tsr1", tsr1)):
    stage_model.check_conditioning(name, cfg)
  tsr1.model.cond_skip = True
  stage_model.check_conditioning("tsr1", tsr1)
  tsr1.diffusion.parameterization = "eps"
  with pytest.raises(ValueError, match=r"'tsr1'.*parameterization='v'; got 'eps'"):
    stage_model.check_conditioning("tsr1", tsr1)
  base.model.cond_skip = True
  with pytest.raises(ValueError, match=r"'base'.*needs an SR stage"):
    stage_model.check_conditioning("base", base)
  tsr1.diffusion.temporal_upsample = "nearest"
  with pytest.raises(ValueError, match=r"'tsr1'.*temporal_upsample='nearest'"):
    stage_model.check_conditioning("tsr1", tsr1)


def test_runlocal_cascade_has_paper_ratios():
  """Each runlocal stage scales frames and size by the paper's factors."""
  ratios = {}
  for variant in ("paper", "runlocal"):
    configs = _configs(*(f"{n}.py:{variant}" for n in common.STAGES))
    ratios[variant] = [
      tuple(
        o / i for o, i in zip(stages.output_shape(c).size, stages.input_shape(c).size)
      )
      for c in configs[1:]
    ]
  assert ratios["runlocal"] == ratios["paper"]
  # tsr1 x2 frames, ssr1 x2 size, ssr2 x4, tsr2 x2, tsr3 x2, ssr3 x4 (Fig. 6).
  assert [r[0] for r in ratios["paper"]] == [2, 1, 1, 2, 2, 1]
  assert [r[1] for r in ratios["paper"]] == [1, 2, 4, 1, 1, 4]


def test_text_configs_must_agree():
  configs = _configs("base.py:demo", "tsr1.py:demo")
  configs[1].text.max_length = 7
  with pytest.raises(ValueError, match="'tsr1' uses text config"):
    stages.check_text(["base", "tsr1"], configs)


# --------------------------------------------------------------------------- #
# Prompt file.
# --------------------------------------------------------------------------- #
def test_read_prompts(prompt_file):
  assert inputs.read_prompts(prompt_file) == [
    "a red 3 moving up",
    "blue 7 moving left",
  ]


def test_prompt_file_errors(tmp_path):
  bad = tmp_path / "bad.txt"
  bad.write_bytes(b"ok\n# fine\n" + b"caf\xe9\n")
  with pytest.raises(ValueError, match=r"bad.txt:3: line is not valid UTF-8"):
    inputs.read_prompts(str(bad))
  empty = tmp_path / "empty.txt"
  empty.write_text("\n# only a comment\n   \n")
  with pytest.raises(ValueError, match="holds no prompt"):
    inputs.read_prompts(str(empty))
  with pytest.raises(ValueError, match="does not exist"):
    inputs.read_prompts(str(tmp_path / "missing.txt"))
  with pytest.raises(ValueError, match="is a directory"):
    inputs.read_prompts(str(tmp_path))


def test_long_prompts_warn(caplog):
  tok = tokenizers.ByteTokenizer(max_length=8)
  with caplog.at_level("WARNING"):
    n = inputs.warn_truncated(["short", "a much longer prompt"], tok)
  assert n == 1
  assert "truncated to 8" in caplog.text and "a much longer prompt" in caplog.text


# --------------------------------------------------------------------------- #
# Sampling.
# --------------------------------------------------------------------------- #
class _TextProbe:
  """A stand-in model whose output shows the text it was given."""

  def apply(self, variables, z, logsnr, emb, mask, **kw):
    del variables, logsnr, kw
    seen = emb.sum(axis=(1, 2)) + mask.sum(axis=1)
    return jnp.zeros_like(z) + seen[:, None, None, None, None]


def _probe_sampler(**guide):
  """The runlocal base's sampler with `_TextProbe` as its model."""
  config = config_utils.load_config("configs/base.py:runlocal")
  settings = config_utils.load_config("configs/cascade.py:runlocal").stages.base
  settings.guidance.update(kind="constant", **guide)
  return pipeline.StageSampler(config, settings, _TextProbe(), jnp.zeros((2,)))


def test_unconditional_half_sees_no_text():
  """One batched call: conditional half with the text, unconditional half with
  zero embeddings and an all-False mask (the trainer's text dropout)."""
  emb, mask = jnp.full((1, 3, 4), 0.5), jnp.array([[True, True, False]])
  z, logsnr = jnp.zeros((1, 2, 2, 2, 3)), jnp.zeros((1,))
  fn = _probe_sampler(w=1.0).predict
  cond, uncond = fn(None, dict(text=emb, mask=mask), z, logsnr, 0)
  np.testing.assert_allclose(cond, 6.0 + 2.0)
  np.testing.assert_allclose(uncond, 0.0)
  single = _probe_sampler(w=0.0).predict
  np.testing.assert_allclose(
    single(None, dict(text=emb, mask=mask), z, logsnr, 0)[1], 8.0
  )


def test_sequential_guidance_passes_match_the_batched_call():
  emb, mask = jnp.full((1, 3, 4), 0.5), jnp.array([[True, True, False]])
  z, logsnr = jnp.zeros((1, 2, 2, 2, 3)), jnp.zeros((1,))
  fn = _probe_sampler(w=1.0, batched=False).predict
  cond, uncond = fn(None, dict(text=emb, mask=mask), z, logsnr, 0)
  np.testing.assert_allclose(cond, 8.0)
  np.testing.assert_allclose(uncond, 0.0)


def test_frame_shards_errors_name_the_stage():
  settings = ml_collections.ConfigDict(dict(frame_shards=3))
  with pytest.raises(ValueError, match=r"Stage 'ssr3': frame_shards=3 must be -1"):
    pipeline.frame_shards("ssr3", settings, 8)
  settings.frame_shards = -1
  assert pipeline.frame_shards("ssr3", settings, 8) == 8
  config = config_utils.load_config("configs/base.py:runlocal")  # 2 frames.
  cascade = config_utils.load_config("configs/cascade.py:runlocal")
  mesh = pipeline.make_mesh(jax.devices()[:4], 4)
  with pytest.raises(
    ValueError, match="'base': its 2 frames do not split over frame_shards=4"
  ):
    pipeline.make_stage_fn(config, cascade.stages.base, mesh=mesh)


def test_frames_split_over_devices_give_the_same_videos_in_less_memory():
  """A sample's frames split over 4 of 8 devices (2 samples at a time, in 4
  rounds): the same videos as one sample per device, and the compiled loop's
  temporaries per device shrink about as much as the frames do."""
  config = config_utils.load_config("configs/ssr2.py:runlocal")  # 4x64x64.
  settings = config_utils.load_config("configs/cascade.py:runlocal").stages.ssr2
  settings.guidance.w = 1.0  # Both passes (one after the other when split).
  variables = _random_variables(config, 3)
  n = 8
  keys = jax.random.key_data(jax.random.split(jax.random.key(0), n))
  emb = jax.random.normal(jax.random.key(1), (n, 5, 64))
  mask = jnp.ones((n, 5), bool)
  prev = jax.random.uniform(jax.random.key(2), (n, 4, 16, 16, 3), minval=-1)
  outs, temps = [], []
  for shards in (1, 4):
    mesh = pipeline.make_mesh(jax.devices()[:n], shards)
    batch = jax.NamedSharding(mesh, jax.P("data"))
    fn = jax.jit(
      pipeline.make_stage_fn(config, settings, mesh=mesh), out_shardings=batch
    )
    args = [jax.device_put(x, batch) for x in (keys, emb, mask, prev)]
    compiled = fn.lower(variables, *args).compile()
    temps.append(compiled.memory_analysis().temp_size_in_bytes)
    outs.append(np.asarray(compiled(variables, *args)))
  assert outs[0].shape == (n, 4, 64, 64, 3)
  np.testing.assert_allclose(outs[1], outs[0], atol=1e-5)
  assert temps[1] < 0.4 * temps[0], temps


def test_sampling_params_take_the_compute_dtype():
  params = {"w": jnp.ones((2, 3)), "step": jnp.array(3, jnp.int32)}
  bf16 = stage_model.sampling_params(
    params, ml_collections.ConfigDict(dict(dtype="bfloat16"))
  )
  assert bf16["w"].dtype == jnp.bfloat16 and bf16["step"].dtype == jnp.int32
  np.testing.assert_array_equal(bf16["w"].astype(jnp.float32), params["w"])
  f32 = stage_model.sampling_params(
    params, ml_collections.ConfigDict(dict(dtype="float32"))
  )
  assert f32["w"] is params["w"]
  spec = {"w": jax.ShapeDtypeStruct((4,), jnp.float32, sharding=None)}
  abstract = stage_model.sampling_params(
    spec, ml_collections.ConfigDict(dict(dtype="bfloat16"))
  )
  assert abstract["w"].shape == (4,) and abstract["w"].dtype == jnp.bfloat16


def test_input_video_becomes_first_stage_input(tmp_path):
  """A user's video file -> evenly spaced frames, resized, in [-1, 1]."""
  video = np.zeros((6, 16, 16, 3), np.uint8)
  video[:, :, :, 0] = (np.arange(6) * 40)[:, None, None]  # Frame t has red 40 t.
  video_io.write_mp4(str(tmp_path / "in.mp4"), video, fps=6)
  x = inputs.load_input_video(str(tmp_path / "in.mp4"), 3, 8, 8)
  assert x.shape == (3, 8, 8, 3) and x.dtype == jnp.float32
  expected = np.array([0, 80, 160]) / 127.5 - 1  # Frames 0, 2, 4.
  np.testing.assert_allclose(x[..., 0].mean(axis=(1, 2)), expected, atol=0.06)
  with pytest.raises(ValueError, match="has 6 frames; need 7"):
    inputs.load_input_video(str(tmp_path / "in.mp4"), 7, 8, 8)


def test_bad_input_video_fails_before_the_outdir_exists(
  runlocal_root, tmp_path, prompt_file
):
  """The input video is read (and its frames counted) before the output
  folder is made, and a damaged file's error names ffmpeg's reason."""
  kw = dict(prompts_path=prompt_file, stage_spec="tsr1")
  text = tmp_path / "notes.mp4"
  text.write_text("not a video\n")
  outdir = tmp_path / "out"
  with pytest.raises(ValueError, match="notes.mp4.*Invalid data found"):
    sample.sample(
      _cascade(runlocal_root), outdir=str(outdir), input_video=str(text), **kw
    )
  assert not outdir.exists()
  short = str(tmp_path / "short.mp4")  # tsr1 takes 2 frames.
  video_io.write_mp4(short, np.zeros((1, 16, 16, 3), np.uint8), fps=4)
  with pytest.raises(ValueError, match="short.mp4' has 1 frames; need 2"):
    sample.sample(_cascade(runlocal_root), outdir=str(outdir), input_video=short, **kw)
  assert not outdir.exists()


@pytest.mark.slow
def test_sample_is_independent_of_its_batch(runlocal_root):
  """Sample i depends on its own key only, not on what it was batched with."""
  config = config_utils.load_config("configs/base.py:runlocal")
  settings = config_utils.load_config("configs/cascade.py:runlocal").stages.base
  variables = stage_model.as_variables(
    checkpointing.restore_ema_params(str(runlocal_root / "base"))
  )
  fn = jax.jit(pipeline.make_stage_fn(config, settings))
  keys = jax.random.key_data(jax.random.split(jax.random.key(0), 3))
  emb = jax.random.normal(jax.random.key(1), (3, 5, 64))
  mask = jnp.ones((3, 5), bool)
  out = fn(variables, keys, emb, mask, None)
  assert out.shape == (3, 2, 8, 8, 3)
  swapped = fn(variables, keys[::-1], emb[::-1], mask, None)
  np.testing.assert_allclose(swapped[::-1], out, atol=1e-5)
  assert not np.allclose(out[0], out[1])


def test_missing_checkpoint_names_stage_and_path(tmp_path, prompt_file):
  with pytest.raises(
    ValueError, match=r"Stage 'base': no checkpoint in .*nowhere/base/checkpoints"
  ):
    sample.sample(
      _cascade(tmp_path / "nowhere"), prompts_path=prompt_file, outdir=f"{tmp_path}/out"
    )


def test_chain_error_before_sampling(runlocal_root, tmp_path, prompt_file):
  with pytest.raises(
    ValueError, match="'base' outputs 2x8x8 .*'tsr1' expects input 8x16x16"
  ):
    sample.sample(
      _cascade(
        runlocal_root,
        tsr1__config="configs/tsr1.py:demo",
        tsr1__workdir=str(tmp_path / "tsr1"),
      ),
      prompts_path=prompt_file,
      outdir=f"{tmp_path}/out",
    )
  assert not os.path.exists(tmp_path / "out")


def test_stage_config_takes_the_trained_network_from_the_workdir(tmp_path):
  trained = config_utils.load_config("configs/base.py:runlocal")
  trained.model.base_channels = 12
  trained.model.temporal_mixing = ("conv", "attention")
  checkpointing.prepare_workdir(str(tmp_path / "base"), trained)
  config = sample._stage_config(
    "base", "configs/base.py:runlocal", str(tmp_path / "base")
  )
  assert config.model.base_channels == 12
  assert config.model.temporal_mixing == ("conv", "attention")
  # A config.json from before a key existed: the key keeps its default.
  path = tmp_path / "base" / "config.json"
  saved = json.loads(path.read_text())
  del saved["model"]["cond_skip"], saved["diffusion"]["temporal_upsample"]
  path.write_text(json.dumps(saved))
  config = sample._stage_config(
    "base", "configs/base.py:runlocal", str(tmp_path / "base")
  )
  assert config.model.base_channels == 12 and config.model.cond_skip is False
  assert config.diffusion.temporal_upsample == "repeat"
  # No config.json: the named config as it is.
  config = sample._stage_config("base", "configs/base.py:runlocal", str(tmp_path))
  assert config.model.base_channels == 8
  with pytest.raises(ValueError, match=r"Stage 'tsr1' workdir .* is from stage"):
    sample._stage_config("tsr1", "configs/tsr1.py:runlocal", str(tmp_path / "base"))


def test_outdir_errors(runlocal_root, tmp_path, prompt_file):
  kw = dict(prompts_path=prompt_file, stage_spec="base")
  cascade = _cascade(runlocal_root)
  (tmp_path / "afile").write_text("x")
  with pytest.raises(ValueError, match="afile/out.*not writable"):
    sample.sample(cascade, outdir=f"{tmp_path}/afile/out", **kw)
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "0000.mp4").write_text("old")
  with pytest.raises(ValueError, match="not empty; pass --overwrite"):
    sample.sample(cascade, outdir=f"{tmp_path}/full", **kw)


def _copy_stage(runlocal_root, name, to):
  shutil.copytree(runlocal_root / name, to)
  return to


def test_overwrite_keeps_the_previous_samples_when_the_run_fails(
  runlocal_root, tmp_path, prompt_file
):
  """A damaged checkpoint stops the run before any sample: the old ones stay."""
  base = _copy_stage(runlocal_root, "base", tmp_path / "base")
  damage(base / "checkpoints" / "1")
  outdir = tmp_path / "samples"
  outdir.mkdir()
  (outdir / "0000.mp4").write_text("old")
  with pytest.raises(ValueError, match=r"Stage 'base': cannot restore.*No readable"):
    sample.sample(
      _cascade(runlocal_root, base__workdir=str(base)),
      prompts_path=prompt_file,
      outdir=str(outdir),
      stage_spec="base",
      overwrite=True,
    )
  assert os.listdir(outdir) == ["0000.mp4"]
  assert (outdir / "0000.mp4").read_text() == "old"
  assert sorted(os.listdir(tmp_path)) == ["base", "prompts.txt", "samples"]


def test_each_checkpoint_stage_is_checked_without_config_json(
  runlocal_root, tmp_path, prompt_file
):
  """base pointed at tsr1's checkpoints: named before any parameter loads."""
  workdir = _copy_stage(runlocal_root, "tsr1", tmp_path / "not_base")
  os.remove(workdir / "config.json")
  with pytest.raises(
    ValueError, match=r"Stage 'base': cannot restore .*not_base.*'tsr1'.*'base'"
  ):
    sample.sample(
      _cascade(runlocal_root, base__workdir=str(workdir)),
      prompts_path=prompt_file,
      outdir=str(tmp_path / "out"),
      stage_spec="base",
    )


@pytest.fixture
def tmpfs(tmp_path):
  """mount(size) -> a fresh tmpfs of `size` (another filesystem than tmp_path),
  unmounted afterwards; skips the test where mounting is not allowed."""
  mounted = []

  def mount(size):
    if os.geteuid() != 0 or not shutil.which("mount"):
      pytest.skip("Mounting a tmpfs needs root and mount(8); not here.")
    path = tmp_path / f"mnt{len(mounted)}"
    path.mkdir()
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
      pytest.skip(f"Cannot mount a tmpfs here: {proc.stderr.strip()}")
    mounted.append(path)
    return path

  yield mount
  for path in mounted:
    subprocess.run(["umount", str(path)], check=True)


def _old_samples(outdir):
  """Two old samples, their records and a user's note in `outdir` -> bytes."""
  outdir.mkdir(exist_ok=True)
  rng = np.random.default_rng(0)
  old = {"0000.mp4": rng.bytes(3000), "0001.mp4": rng.bytes(3000)}
  old |= {"samples.jsonl": b'{"index": 0}\n{"index": 1}\n', "notes.txt": b"mine"}
  for name, data in old.items():
    (outdir / name).write_bytes(data)
  return old


def _contents(folder):
  """{name: bytes} of a folder's files (None for a subfolder)."""
  return {p.name: None if p.is_dir() else p.read_bytes() for p in folder.iterdir()}


def _overwrite(outdir, new_files):
  """An --overwrite run's output folder: writes `new_files`, returns writedir."""
  outputs.prepare_outdir(str(outdir), overwrite=True)
  with outputs.output_folder(str(outdir)) as writedir:
    for name, data in new_files.items():
      with open(os.path.join(writedir, name), "wb") as f:
        f.write(data)
  return writedir


def test_overwrite_stages_on_the_outdirs_filesystem(tmp_path):
  """The new samples are staged inside the folder (a rename away from their
  place) and replace the old ones; other files stay; nothing is left beside."""
  outdir = tmp_path / "samples"
  _old_samples(outdir)
  new = {"0000.mp4": b"new0", "samples.jsonl": b'{"index": 0}\n'}
  writedir = _overwrite(outdir, new)
  assert writedir == str(outdir / outputs.STAGING)
  assert _contents(outdir) == new | {"notes.txt": b"mine"}  # 0001.mp4 is gone.
  assert sorted(os.listdir(tmp_path)) == ["samples"]


def test_overwrite_into_a_mount_point(tmpfs, tmp_path):
  """The output folder is its own filesystem: the samples are staged on it, not
  in its parent (where the final move failed with EXDEV and a later run
  deleted them)."""
  outdir = tmpfs("4m")
  assert os.stat(outdir).st_dev != os.stat(tmp_path).st_dev
  _old_samples(outdir)
  new = {"0000.mp4": b"new0", "0001.gif": b"new1", "samples.jsonl": b"{}\n"}
  _overwrite(outdir, new)
  assert _contents(outdir) == new | {"notes.txt": b"mine"}
  assert sorted(os.listdir(tmp_path)) == [outdir.name]


def test_a_full_disk_names_the_file_and_keeps_the_old_samples(tmpfs):
  """No space for the new samples: the error names the file, the old samples
  stay byte for byte and the staging folder is gone."""
  outdir = tmpfs("256k")
  old = _old_samples(outdir)
  video = np.random.default_rng(1).integers(0, 256, (8, 64, 64, 3), np.uint8)
  with pytest.raises(OSError, match=r"Cannot write .*\.partial/000\d\.npy"):
    outputs.prepare_outdir(str(outdir), overwrite=True)
    with outputs.output_folder(str(outdir)) as writedir:
      for i in range(4):  # 100 kB each.
        video_io.write_sample(writedir, i, video, 4.0, save_npy=True)
  assert _contents(outdir) == old


def test_a_later_run_finishes_an_interrupted_swap(tmp_path):
  """A run stopped while it moved its samples in: the next --overwrite run
  moves the rest in first, so they survive even when that run fails."""
  outdir = tmp_path / "samples"
  _old_samples(outdir)
  staging = outdir / outputs.STAGING
  staging.mkdir()  # As the stopped run left it: 0000.mp4 moved, 0002.mp4 not.
  (outdir / "0000.mp4").write_bytes(b"new0")
  (staging / "0002.mp4").write_bytes(b"new2")
  (staging / "samples.jsonl").write_bytes(b"new records")
  (staging / ".staged.json").write_text('["0000.mp4", "0002.mp4", "samples.jsonl"]')
  recovered = {
    "0000.mp4": b"new0",
    "0002.mp4": b"new2",
    "samples.jsonl": b"new records",
    "notes.txt": b"mine",
  }
  with (
    pytest.raises(RuntimeError, match="stopped"),
    outputs.output_folder(str(outdir)) as writedir,
  ):
    assert _contents(outdir) == recovered | {outputs.STAGING: None}
    with open(os.path.join(writedir, "0000.mp4"), "wb") as f:
      f.write(b"newer")
    raise RuntimeError("stopped")
  assert _contents(outdir) == recovered
  # A run stopped before it had written all its samples: those are dropped.
  staging.mkdir()
  (staging / "0005.mp4").write_bytes(b"half")
  with (
    pytest.raises(RuntimeError, match="stopped"),
    outputs.output_folder(str(outdir)) as writedir,
  ):
    assert os.listdir(writedir) == []
    raise RuntimeError("stopped")
  assert _contents(outdir) == recovered


@pytest.mark.slow
def test_end_to_end_writes_every_file_kind(runlocal_root, tmp_path, prompt_file):
  outdir = tmp_path / "samples"
  outdir.mkdir()
  (outdir / "0009.gif").write_text("stale")  # Cleared by --overwrite.
  returned = sample.sample(
    _cascade(runlocal_root),
    prompts_path=prompt_file,
    outdir=str(outdir),
    stage_spec="base:tsr1",
    num_samples=2,
    seed=5,
    save_npy=True,
    overwrite=True,
  )
  lines = (outdir / "samples.jsonl").read_text().splitlines()
  records = [json.loads(line) for line in lines]
  assert records == json.loads(json.dumps(returned))
  prompts = ["a red 3 moving up", "blue 7 moving left"]
  assert [r["prompt"] for r in records] == [p for p in prompts for _ in range(2)]
  assert [r["seed"] for r in records] == [5, 6, 7, 8]
  assert list(records[0]["stages"]) == ["base", "tsr1"]
  assert records[0]["stages"]["tsr1"]["aug_logsnr"] == pytest.approx(np.log(3))
  assert records[0]["stages"]["base"]["steps"] == 2
  expected_files = {"samples.jsonl"}
  for i, r in enumerate(records):
    files = r["files"]
    assert files == {k: f"{i:04d}.{k}" for k in ("mp4", "gif", "png", "npy")}
    expected_files |= set(files.values())
    assert r["seconds"] > 0
    video = np.load(outdir / files["npy"])
    assert video.dtype == np.uint8 and video.shape == (4, 8, 8, 3)
    decoded, fps = video_io.read_video(str(outdir / files["mp4"]))
    assert decoded.shape == video.shape and fps == pytest.approx(2.0)
    assert np.abs(decoded.astype(float) - video).mean() < 40  # Lossy; noisy video.
    with Image.open(outdir / files["gif"]) as gif:
      assert gif.size == (8, 8) and gif.n_frames >= 2
    with Image.open(outdir / files["png"]) as png:
      assert png.size == (4 * 10 + 2, 10 + 2)
  assert set(os.listdir(outdir)) == expected_files
  assert not [n for n in os.listdir(tmp_path) if n.endswith(".partial")]  # Staging.
  # Different seeds give different videos.
  assert not np.array_equal(np.load(outdir / "0000.npy"), np.load(outdir / "0001.npy"))


@pytest.mark.slow
def test_frame_shards_write_the_same_samples(runlocal_root, tmp_path, prompt_file):
  """sample.py with tsr1's frames split over 2 devices (its own mesh, the base's
  videos moved onto it) writes the videos of the data-parallel run."""
  videos = []
  for shards in (1, 2):
    outdir = tmp_path / f"shards{shards}"
    sample.sample(
      _cascade(runlocal_root, tsr1__frame_shards=shards),
      prompts_path=prompt_file,
      outdir=str(outdir),
      stage_spec="base:tsr1",
      save_npy=True,
    )
    videos.append(np.stack([np.load(outdir / f"{i:04d}.npy") for i in range(2)]))
  diff = np.abs(videos[1].astype(int) - videos[0])
  assert diff.max() <= 1 and (diff > 0).mean() < 0.01


@pytest.mark.slow
def test_seven_stage_runlocal_cascade(runlocal_root, tmp_path):
  """All seven runlocal stages chain to 16x256x256 through the CLI (one device,
  one sample, one step each; unguided late stages and XLA's fastest compile)."""
  prompts = tmp_path / "p.txt"
  prompts.write_text("green 1 moving down\n")
  env = dict(os.environ, XLA_FLAGS="--xla_backend_optimization_level=0")
  cmd = [
    sys.executable, "-m", "imagen_video_jax.sample",
    "--config=configs/cascade.py:runlocal",
    f"--config.workdir_root={runlocal_root}",
    "--config.batch_size=1",
    f"--prompts={prompts}",
    f"--outdir={tmp_path}/out",
    "--save_npy",
  ] + [f"--config.stages.{n}.steps=1" for n in common.STAGES] + [
    f"--config.stages.{n}.guidance.w=0" for n in ("ssr2", "tsr2", "tsr3", "ssr3")
  ]  # fmt: skip
  proc = subprocess.run(
    cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = tmp_path / "out"
  record = json.loads((out / "samples.jsonl").read_text())
  assert list(record["stages"]) == list(common.STAGES)
  assert record["stages"]["ssr3"]["steps"] == 1
  assert record["files"] == {k: f"0000.{k}" for k in ("mp4", "gif", "png", "npy")}
  video = np.load(out / "0000.npy")
  assert video.shape == (16, 256, 256, 3)
  decoded, fps = video_io.read_video(str(out / "0000.mp4"))
  assert decoded.shape == video.shape and fps == pytest.approx(8.0)
  with Image.open(out / "0000.gif") as gif:
    assert gif.size == (256, 256)


@pytest.mark.slow
def test_end_to_end_super_resolves_an_input_video(runlocal_root, tmp_path, prompt_file):
  # The SR stage alone, its input read from a file (compiled from its shape).
  clip = str(tmp_path / "clip.mp4")
  frames = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3), np.uint8)
  video_io.write_mp4(clip, frames, fps=4)
  outdir = tmp_path / "sr"
  records = sample.sample(
    _cascade(runlocal_root),
    prompts_path=prompt_file,
    outdir=str(outdir),
    stage_spec="tsr1",
    input_video=clip,
    save_npy=True,
  )
  assert [list(r["stages"]) for r in records] == [["tsr1"], ["tsr1"]]
  assert all(r["input_video"] == clip for r in records)
  video = np.load(outdir / records[0]["files"]["npy"])
  assert video.dtype == np.uint8 and video.shape == (4, 8, 8, 3)


@pytest.mark.slow
def test_two_hosts_write_the_samples_of_one_host(runlocal_root, tmp_path):
  """Under launch/multihost.sh each process draws its share of the samples
  into one folder; the files and records are those of a one-process run."""
  prompts = tmp_path / "p.txt"
  prompts.write_text("red 3 moving up\nblue 7 moving left\ngreen 1 moving down\n")
  (tmp_path / "two").mkdir()
  (tmp_path / "two" / "0007.npy").write_text("stale")  # Removed: --overwrite.
  for processes, devices, name in ((1, 2, "one"), (2, 1, "two")):
    cmd = [
      sys.executable, "-m", "imagen_video_jax.sample",
      f"--config=configs/cascade.py:runlocal,workdir_root={runlocal_root}",
      "--stages=base:tsr1", f"--prompts={prompts}", f"--outdir={tmp_path / name}",
      "--num_samples=2", "--save_npy", "--overwrite",
    ]  # fmt: skip
    if processes > 1:
      logs = str(tmp_path / f"logs_{name}")
      launch = ["bash", "launch/multihost.sh", str(processes), str(devices), logs]
      cmd = [*launch, "--", *cmd]
    env = dict(
      os.environ,
      JAX_PLATFORMS="cpu",
      XLA_FLAGS=xla_flags(devices),
    )
    proc = subprocess.run(
      cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
  one, two = tmp_path / "one", tmp_path / "two"
  assert sorted(os.listdir(one)) == sorted(os.listdir(two))
  for i in range(6):
    np.testing.assert_array_equal(
      np.load(one / f"{i:04d}.npy"), np.load(two / f"{i:04d}.npy")
    )

  def records(folder):
    lines = (folder / "samples.jsonl").read_text().splitlines()
    drop = ("seconds", "stages")  # Wall times differ.
    return [{k: v for k, v in json.loads(x).items() if k not in drop} for x in lines]

  assert records(one) == records(two)
  assert [r["index"] for r in records(two)] == list(range(6))
