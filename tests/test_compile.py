"""Tests of benchmarks/compile.py: the TPU compiler on this CPU (libtpu) and locally."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One process may hold libtpu at a time: the tests that load it share an xdist worker.
libtpu_group = pytest.mark.xdist_group("libtpu")


def compile_report(tmp_path, *flags: str, devices: int = 2) -> dict:
  """Runs the benchmark in its own process (one libtpu holder at a time)."""
  out = tmp_path / "report.json"
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
  )
  proc = subprocess.run(
    [sys.executable, "-m", "imagen_video_jax.benchmarks.compile", f"--json={out}"]
    + list(flags),
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "fits: yes" in proc.stdout
  with open(out) as f:
    return json.load(f)


@pytest.mark.slow
@libtpu_group
def test_runlocal_base_train_step_compiles_for_a_v5e_topology(tmp_path):
  pytest.importorskip("libtpu")
  r = compile_report(
    tmp_path, "--config=configs/base.py:runlocal", "--topology=v5e:2x2", "--mesh=1,4,1"
  )
  assert r["devices"] == "4 x TPU v5 lite"
  assert r["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
  assert r["fits"] and r["hbm_bytes"] == 16 * 2**30
  assert 0 < r["memory"]["total"] < r["hbm_bytes"]
  assert r["flops"] > 0 and r["estimated_s"] > 0
  # FSDP over 4 chips: every chip holds about a quarter of the state.
  for key in ("params", "opt_state", "ema_params"):
    assert r["state_bytes"][key] <= 0.27 * r["replicated_bytes"][key], key
  # The donated state's buffers are reused for the new state.
  assert r["memory"]["alias"] > 0


def test_sampling_loop_compiles_for_the_local_devices(tmp_path):
  r = compile_report(
    tmp_path,
    "--program=sample",
    "--config=configs/cascade.py:runlocal",
    "--stage=tsr1",
    "--batch_per_chip=2",
  )
  assert r["program"] == "sample" and r["batch"] == 4
  assert r["mesh"] == {"data": 2, "frames": 1}
  # Params replicated: the sampler is data parallel.
  assert r["state_bytes"]["params"] == r["replicated_bytes"]["params"] > 0
  assert r["memory"]["argument"] >= r["state_bytes"]["params"] and r["flops"] > 0


@pytest.mark.slow
@libtpu_group
def test_frames_split_over_a_v5e_topology_cut_the_temporaries(tmp_path):
  """ssr2's sampling loop on 4 v5e chips: one sample's frames over all four
  holds far fewer temporaries per chip than one sample per chip."""
  pytest.importorskip("libtpu")
  flags = ["--program=sample", "--config=configs/cascade.py:runlocal", "--stage=ssr2"]
  flags.append("--topology=v5e:2x2")
  data = compile_report(tmp_path, *flags)
  split = compile_report(tmp_path, *flags, "--frame_shards=-1")
  assert data["mesh"] == {"data": 4, "frames": 1}
  assert split["mesh"] == {"data": 1, "frames": 4} and split["batch"] == 4
  assert split["memory"]["temporary"] < 0.5 * data["memory"]["temporary"]


@libtpu_group
@pytest.mark.parametrize(
  "flags, match",
  [
    (
      ["--config=configs/base.py:runlocal", "--topology=v9z:1x1"],
      "--topology='v9z:1x1'",
    ),
    (["--config=configs/base.py:runlocal", "--program=sample"], "configs/cascade.py"),
    (
      ["--config=configs/cascade.py:runlocal", "--program=sample", "--stage=ssr9"],
      "--stage='ssr9'",
    ),
  ],
)
def test_bad_flags_name_the_culprit(tmp_path, flags, match):
  proc = subprocess.run(
    [sys.executable, "-m", "imagen_video_jax.benchmarks.compile", *flags],
    cwd=ROOT,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode != 0 and match in proc.stderr


_BENCHMARK_SAMPLE_HLO = """
import hashlib, sys, jax
from imagen_video_jax import config_utils
from imagen_video_jax.benchmarks import compile as bench
cascade = config_utils.load_config("configs/cascade.py:runlocal")
lowered, *_ = bench.lower_sample(cascade, "tsr1", jax.devices(), int(sys.argv[1]))
print(hashlib.sha256(lowered.as_text().encode()).hexdigest())
"""


class _StopBeforeCompileError(Exception):
  """Stops sample.sample at its first compile, once its stages are lowered."""


def test_the_sampling_benchmark_lowers_the_samplers_program(tmp_path, monkeypatch):
  """benchmarks/compile.py's --program=sample is sample.py's program: its tsr1
  loop lowers to the text sample.sample lowers (the benchmark runs in its own
  process: both binaries define --config)."""
  import hashlib

  import jax
  from test_sample import save_runlocal_checkpoints

  from imagen_video_jax import config_utils, sample
  from imagen_video_jax.cascade import inputs

  save_runlocal_checkpoints(tmp_path / "runs")
  cascade = config_utils.load_config("configs/cascade.py:runlocal")
  cascade.workdir_root = str(tmp_path / "runs")
  (tmp_path / "prompts.txt").write_text("a red 3 moving up\n")
  texts = []

  def record(lowered, *args, **kwargs):
    texts.append(lowered.as_text())
    raise _StopBeforeCompileError

  monkeypatch.setattr(jax.stages.Lowered, "compile", record)
  with pytest.raises(_StopBeforeCompileError):
    sample.sample(
      cascade,
      prompts_path=str(tmp_path / "prompts.txt"),
      outdir=str(tmp_path / "out"),
      stage_spec="base:tsr1",
    )
  monkeypatch.undo()
  per_chip = inputs.padded_batch(cascade.batch_size, jax.local_device_count())
  per_chip //= jax.local_device_count()
  proc = subprocess.run(
    [sys.executable, "-c", _BENCHMARK_SAMPLE_HLO, str(per_chip)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  sampler = {hashlib.sha256(t.encode()).hexdigest() for t in texts}
  assert len(texts) == 2 and proc.stdout.split()[-1] in sampler
