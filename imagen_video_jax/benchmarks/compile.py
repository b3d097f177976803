r"""Ahead-of-time compile of a stage's train step or sampling loop: memory per chip.

  python -m imagen_video_jax.benchmarks.compile --config=configs/base.py:paper \
    --topology=v5p:4x4x4 --mesh=-1,16,1
  python -m imagen_video_jax.benchmarks.compile --program=sample \
    --config=configs/cascade.py:paper --stage=ssr3 --topology=v5e:2x4
  python -m imagen_video_jax.benchmarks.compile --config=configs/base.py:runlocal

Builds the program as the binaries do: `train` is train.py's step
(`programs.jit_train_step`, its state placed by the logical-axis rules, traced
under them), `sample` is sample.py's sampling loop of one cascade stage
(`pipeline.lower_stage`, as sample.py lowers it: its guidance included,
params replicated, the batch split over the chips, each sample's frames over
the stage's `frame_shards` of them), `text` is the frozen T5 encoder on a batch of captions.
It lowers the program for the devices of a named TPU topology, through
libtpu's compiler without any TPU (`pip install libtpu`), or for the local
devices when --topology is empty, compiles it and prints per chip: the train
state's bytes (params, optimizer, EMA) against their replicated size, the
compiled program's argument, temporary and output bytes against the chip's
HBM, whether it fits, its FLOPs, the compiler's own time estimate with the MFU
it implies (an estimate, not a measurement) and the compile time. A program
that does not fit the chip's HBM fails to compile on TPU; that is printed as
"fits: no" with the compiler's message.

Only one process may hold libtpu at a time; one killed while holding it leaves
`libtpu_lockfile` in the system temporary folder, and the next one aborts until
that file is removed.
"""

import contextlib
import dataclasses
import glob
import json
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from imagen_video_jax import (
  config_utils,
  distill_lib,
  programs,
  reporting,
  run_lib,
  sharding,
  train_lib,
)
from imagen_video_jax.benchmarks import util
from imagen_video_jax.cascade import pipeline
from imagen_video_jax.models import stage_model

_CONFIG = flags.DEFINE_string(
  "config", None, "A stage config (train, text) or configs/cascade.py:VARIANT."
)
_PROGRAM = flags.DEFINE_enum("program", "train", ["train", "sample", "text"], "What.")
_STAGE = flags.DEFINE_string("stage", "base", "The cascade's stage (--program=sample).")
_TOPOLOGY = flags.DEFINE_string(
  "topology", "", "A TPU topology, e.g. v5e:2x2 or v5p:4x4x4 ('' = local devices)."
)
_MESH = flags.DEFINE_string(
  "mesh", "", "(data, fsdp, tensor), e.g. -1,4,1 ('' = config.mesh.shape)."
)
_BATCH = flags.DEFINE_integer("batch", 0, "Global train batch (0 = the config's).")
_BATCH_PER_CHIP = flags.DEFINE_integer(
  "batch_per_chip", 1, "Samples (sample) or captions (text) per chip."
)
_FRAME_SHARDS = flags.DEFINE_integer(
  "frame_shards",
  None,
  "Devices a sample's frames split over (--program=sample; "
  "-1 = all; default: the stage's setting).",
)
_STATE_ONLY = flags.DEFINE_bool(
  "state_only", False, "Only the train state's bytes per chip (no lowering, seconds)."
)
_JSON = flags.DEFINE_string("json", "", "Also write the figures to this JSON file.")
_TABLE = flags.DEFINE_string(
  "table", "", "Print the Markdown table of the --json reports in this folder, exit."
)

GIB = 2**30
# HBM per chip, by substring of `jax.Device.device_kind`, first match (as
# reporting.PEAK_FLOPS): v5e is 'TPU v5 lite', v5p 'TPU v5'.
HBM_BYTES = (
  ("TPU v6", 32 * GIB),
  ("TPU v5 lite", 16 * GIB),
  ("TPU v5e", 16 * GIB),
  ("TPU v5", 95 * GIB),
  ("TPU v4", 32 * GIB),
  ("TPU v3", 16 * GIB),
)


@dataclasses.dataclass
class Report:
  """What one compile measured, per chip (bytes, FLOPs, seconds)."""

  program: str
  config: str  # --config, and the stage for --program=sample.
  devices: str  # e.g. '64 x TPU v5p'.
  mesh: dict[str, int]
  batch: int  # Global batch.
  state_bytes: dict[str, float]  # Per chip: params, opt_state, ema_params.
  replicated_bytes: dict[str, float]  # The same, unsharded.
  hbm_bytes: float  # 0 where the device kind is not in HBM_BYTES.
  fits: bool | None  # None: not compiled (--state_only).
  compile_s: float
  memory: dict[str, float] | None = None  # Argument, temporary, output bytes.
  flops: float = 0.0
  estimated_s: float = 0.0  # The compiler's own estimate of one call.
  peak_flops: float = 0.0
  error: str = ""


def devices_of(topology: str) -> list[Any]:
  """The devices of a TPU topology (libtpu's compiler, no TPU), or the local ones."""
  if not topology:
    return jax.devices()
  from jax.experimental import topologies

  try:
    desc = topologies.get_topology_desc(topology_name=topology, platform="tpu")
  except Exception as e:  # libtpu missing, or a name it does not know.
    raise ValueError(
      f"--topology={topology!r}: no TPU topology of that name ({e}); "
      "install libtpu (pip install libtpu) and name one as v5e:2x2 or v5p:4x4x4."
    ) from e
  return list(desc.devices)


def hbm_bytes(device: Any) -> float:
  """The chip's HBM: memory_stats() where the device reports it, else the table."""
  try:  # A topology's devices (not addressable) have no stats.
    stats = device.memory_stats()
  except jax.errors.JaxRuntimeError:
    stats = None
  if stats and stats.get("bytes_limit"):
    return float(stats["bytes_limit"])
  kind = device.device_kind
  return float(next((b for name, b in HBM_BYTES if name in kind), 0))


def tree_bytes(tree: Any, per_chip: bool) -> float:
  """Bytes of a tree of ShapeDtypeStructs carrying shardings: one shard, or all."""

  def leaf(x):
    shape = x.sharding.shard_shape(x.shape) if per_chip else x.shape
    return float(np.prod(shape)) * jnp.dtype(x.dtype).itemsize

  return float(sum(leaf(x) for x in jax.tree.leaves(tree)))


def _compile(lowered: Any) -> tuple[Any, float, str]:
  """(compiled or None, seconds, the compiler's out-of-memory message or '')."""
  start = time.perf_counter()
  try:
    compiled = lowered.compile()
  except Exception as e:  # XlaRuntimeError: RESOURCE_EXHAUSTED ... HbmOom.
    if "RESOURCE_EXHAUSTED" not in str(e) and "Oom" not in str(e):
      raise
    return None, time.perf_counter() - start, str(e).splitlines()[0][:400]
  return compiled, time.perf_counter() - start, ""


def _mesh_shape(config: Any) -> None:
  """--mesh over config.mesh.shape."""
  if _MESH.value:
    config.mesh.shape = tuple(int(s) for s in _MESH.value.split(","))


def _report(program, devices, mesh, batch, state, compiled, seconds, error) -> Report:
  peak = reporting.peak_flops_of(devices[0].device_kind)
  hbm = hbm_bytes(devices[0])
  name = _CONFIG.value + (f" --stage={_STAGE.value}" if program == "sample" else "")
  report = Report(
    program=program,
    config=name,
    devices=f"{len(devices)} x {devices[0].device_kind}",
    mesh=dict(mesh.shape),
    batch=batch,
    state_bytes={k: tree_bytes(v, True) for k, v in state.items()},
    replicated_bytes={k: tree_bytes(v, False) for k, v in state.items()},
    hbm_bytes=hbm,
    fits=False if error else None,
    compile_s=seconds,
    peak_flops=peak,
    error=error,
  )
  if compiled is not None:
    report.memory = util.memory_per_chip(compiled)
    report.fits = not hbm or report.memory["total"] <= hbm
    cost = compiled.cost_analysis()
    cost = (cost[0] if isinstance(cost, list | tuple) else cost) or {}
    report.flops = float(cost.get("flops", 0.0))
    report.estimated_s = float(cost.get("optimal_seconds", 0.0))
  return report


def compile_train(config: Any, devices: list[Any]) -> Report:
  """train.py's step of a stage config, compiled for `devices`."""
  if _BATCH.value:
    config.batch_size = _BATCH.value
  _mesh_shape(config)
  mesh, rules = sharding.mesh_from_config(config, devices)
  text_apply, text_params, text_shardings = programs.frozen_text_encoder(
    config, mesh, rules, abstract=True
  )
  step, _, abstract_state, _ = programs.jit_train_step(
    config, mesh, rules, text_apply, text_shardings
  )
  batch = train_lib.batch_shapes(
    config, config.batch_size, sharding.batch_sharding(mesh, rules)
  )
  state = {k: abstract_state[k] for k in ("params", "opt_state", "ema_params")}
  if _STATE_ONLY.value:
    return _report("train", devices, mesh, config.batch_size, state, None, 0.0, "")
  compiled, seconds, error = _compile(step.lower(abstract_state, batch, text_params))
  return _report(
    "train", devices, mesh, config.batch_size, state, compiled, seconds, error
  )


def lower_sample(
  cascade: Any,
  name: str,
  devices: list[Any],
  batch_per_chip: int = 1,
  frame_shards: int | None = None,
) -> tuple[Any, jax.sharding.Mesh, int, Any]:
  """sample.py's sampling loop of stage `name`, lowered for `devices`.

  The sampler's own lowering (pipeline.lower_stage, a progress callback
  included) on shapes only: random-init EMA params replicated, a batch of
  `batch_per_chip` samples per chip, the previous stage's output at the input
  stage's full shape.

  Returns:
    (lowered, mesh, global batch, the variables' ShapeDtypeStructs).
  """
  if name not in cascade.stages:
    raise ValueError(f"--stage={name!r} is not a stage of {list(cascade.stages)}.")
  settings = cascade.stages[name]
  if frame_shards is not None:
    settings.frame_shards = frame_shards
  config = config_utils.load_config(settings.config)
  if settings.distilled:  # The student's network: the teacher's, taking w.
    config.distill.teacher = "benchmark"  # Not read: shapes only.
    config = distill_lib.student_config(config)
  shards = pipeline.frame_shards(name, settings, len(devices))
  mesh = pipeline.make_mesh(devices, shards)
  replicated = jax.NamedSharding(mesh, jax.P())
  model = stage_model.make_model(config)
  init_fn = train_lib.make_init_fn(config, model, optax.identity())
  params = nn.meta.unbox(jax.eval_shape(init_fn, jax.random.key(0))["ema_params"])
  variables = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
    stage_model.as_variables(stage_model.sampling_params(params, config)),
  )
  batch = batch_per_chip * len(devices)
  length, dim = config.text.max_length, stage_model.text_dim(config)
  text_shapes = (
    jax.ShapeDtypeStruct((batch, length, dim), jnp.float32),
    jax.ShapeDtypeStruct((batch, length), jnp.bool_),
  )
  video = None
  if config.stage.input is not None:  # The input stage's output, at its full shape.
    s_in = config.stage.input
    video = jax.ShapeDtypeStruct(
      (batch, s_in.frames, s_in.height, s_in.width, 3), jnp.float32
    )
  # sample.py steps a progress bar from the loop; a callback does not change
  # the lowered program, whichever function it calls.
  lowered = pipeline.lower_stage(
    config, settings, variables, mesh, text_shapes, video, on_step=_no_progress
  )
  return lowered, mesh, batch, variables


def _no_progress(step: Any) -> None:
  del step


def compile_sample(cascade: Any, name: str, devices: list[Any]) -> Report:
  """sample.py's sampling loop of the cascade's stage `name`, for `devices`."""
  lowered, mesh, batch, variables = lower_sample(
    cascade, name, devices, _BATCH_PER_CHIP.value, _FRAME_SHARDS.value
  )
  compiled, seconds, error = _compile(lowered)
  return _report(
    "sample", devices, mesh, batch, {"params": variables}, compiled, seconds, error
  )


def compile_text(config: Any, devices: list[Any]) -> Report:
  """The frozen T5 encoder of a stage config on a batch of captions."""
  _mesh_shape(config)
  mesh = sharding.make_mesh(config.mesh, devices)
  rules = sharding.logical_rules(config.logical_axis_rules)
  config.text.precomputed = False
  apply, params, shardings = programs.frozen_text_encoder(
    config, mesh, rules, abstract=True
  )
  batch = _BATCH_PER_CHIP.value * len(devices)
  spec = sharding.batch_sharding(mesh, rules)
  length = config.text.max_length
  fn = jax.jit(
    sharding.under_rules(apply, mesh, rules),
    in_shardings=(shardings, spec, spec),
    out_shardings=spec,
  )
  lowered = fn.lower(
    params,
    jax.ShapeDtypeStruct((batch, length), jnp.int32, sharding=spec),
    jax.ShapeDtypeStruct((batch, length), jnp.bool_, sharding=spec),
  )
  compiled, seconds, error = _compile(lowered)
  return _report(
    "text", devices, mesh, batch, {"params": params}, compiled, seconds, error
  )


def _size(b: float) -> str:
  return f"{b / GIB:.2f} GiB" if b >= GIB / 10 else f"{b / 2**20:.2f} MiB"


def print_report(r: Report) -> None:
  """The report as lines of text (sizes per chip)."""
  gib = _size
  print(f"program {r.program} on {r.devices}, mesh {r.mesh}, global batch {r.batch}")
  for k, v in r.state_bytes.items():
    print(f"  {k}: {gib(v)} per chip ({gib(r.replicated_bytes[k])} replicated)")
  hbm = gib(r.hbm_bytes) if r.hbm_bytes else "unknown"
  if r.memory is not None:
    m = r.memory
    print(
      f"  compiled per chip: arguments {gib(m['argument'])}, temporaries "
      f"{gib(m['temporary'])}, outputs {gib(m['output'])}, aliased "
      f"{gib(m['alias'])}: total {gib(m['total'])} of {hbm} HBM"
    )
  fits = {True: "yes", False: "no", None: "not compiled"}[r.fits]
  print(f"  fits: {fits}{' (' + r.error + ')' if r.error else ''}")
  if r.memory is not None:
    # XLA's cost analysis counts a while loop's body once: a sampling loop's
    # figure is one sampling step, and its time estimate is meaningless.
    loop = " (one step of the loop)" if r.program == "sample" else ""
    print(f"  FLOPs per call per chip{loop}: {r.flops:.4g}")
    if r.estimated_s > 0 and r.program != "sample":
      mfu = r.flops / (r.estimated_s * r.peak_flops) if r.peak_flops else float("nan")
      print(
        f"  compiler's estimate (not a measurement): {r.estimated_s:.4g} s per "
        f"call, MFU {mfu:.1%}"
      )
  print(f"  compile: {r.compile_s / 60:.2f} min", flush=True)


def markdown_table(reports: list[dict[str, Any]]) -> str:
  """One row a report (Report's fields as in its JSON): GiB per chip, fits."""
  rows = [
    "| program | config | chips | mesh | global batch | "
    "state GiB/chip | total GiB/chip | HBM GiB | fits | compile min |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in reports:
    state = sum(r["state_bytes"].values()) / GIB
    total = f"{r['memory']['total'] / GIB:.1f}" if r["memory"] else "-"
    fits = {True: "yes", False: "no", None: "not compiled"}[r["fits"]]
    mesh = ", ".join(f"{k} {v}" for k, v in r["mesh"].items())
    rows.append(
      f"| {r['program']} | {r['config']} | {r['devices']} | {mesh} | {r['batch']} | "
      f"{state:.2f} | {total} | {r['hbm_bytes'] / GIB:.0f} | {fits} | "
      f"{r['compile_s'] / 60:.1f} |"
    )
  return "\n".join(rows)


def main(argv: list[str], exits: contextlib.ExitStack) -> None:
  del argv, exits
  if _TABLE.value:
    paths = sorted(glob.glob(os.path.join(_TABLE.value, "*.json")))
    if not paths:
      raise ValueError(f"--table={_TABLE.value!r}: no *.json reports in that folder.")
    reports = []
    for path in paths:
      with open(path) as f:
        reports.append(json.load(f))
    print(markdown_table(reports))
    return
  if not _CONFIG.value:
    raise ValueError("--config is required (or --table=FOLDER).")
  devices = devices_of(_TOPOLOGY.value)
  config = config_utils.load_config(_CONFIG.value)
  is_cascade = "order" in config and "stages" in config
  if (_PROGRAM.value == "sample") != is_cascade:
    raise ValueError(
      f"--config={_CONFIG.value!r}: --program=sample takes configs/cascade.py, "
      "train and text a stage config."
    )
  if _PROGRAM.value == "train":
    report = compile_train(config, devices)
  elif _PROGRAM.value == "sample":
    report = compile_sample(config, _STAGE.value, devices)
  else:
    report = compile_text(config, devices)
  print_report(report)
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(dataclasses.asdict(report), f, indent=1)


if __name__ == "__main__":
  app.run(run_lib.main_of(main, signals=False))
