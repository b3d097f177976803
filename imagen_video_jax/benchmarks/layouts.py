r"""One global batch on every layout: a stage's first steps on many meshes and hosts.

  python -m imagen_video_jax.benchmarks.layouts [--stages=base,tsr1] [--steps=3] \
    [--layouts=1x1:1,1,1 2x4:1,8,1 ...]

Trains `configs/STAGE.py:runlocal` (global batch 8, from a tiny bouncing_digits
built in a temporary folder) for --steps steps on each layout, PROCESSESxDEVICES
(devices per process) with a (data, fsdp, tensor) mesh; several processes are
simulated hosts (launch/multihost.sh). The first layout is the reference. Per
run it prints the logged losses and the largest difference from the
reference's: every layout trains on the same global batches (a function of the
seed, the step and the batch size alone), so the differences are float
rounding of the reductions' order, not data.
"""

import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

from imagen_video_jax import data_build, reporting

_MESHES = ("8,1,1", "1,8,1", "2,4,1", "2,2,2", "1,4,2")
_STAGES = flags.DEFINE_list("stages", ["base"], "Stage configs (runlocal variant).")
_STEPS = flags.DEFINE_integer("steps", 3, "Training steps of each run.")
_LAYOUTS = flags.DEFINE_list(
  "layouts",
  ["1x1:1,1,1"] + [f"{p}:{m}" for m in _MESHES for p in ("1x8", "2x4")],
  "PROCESSESxDEVICES:DATA,FSDP,TENSOR per run; the first is the reference.",
)
_BATCH = flags.DEFINE_integer("batch_size", 8, "Global batch of every run.")

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_layout(spec: str) -> tuple[int, int, tuple[int, int, int]]:
  """'2x4:1,8,1' -> (2 processes, 4 devices each, mesh (1, 8, 1)).

  Raises:
    ValueError: naming `spec` if it is not of that form.
  """
  try:
    hosts, mesh = spec.split(":")
    processes, devices = (int(n) for n in hosts.split("x"))
    shape = tuple(int(n) for n in mesh.split(","))
    if len(shape) != 3 or min(processes, devices, *shape) < 1:
      raise ValueError
  except ValueError:
    raise ValueError(
      f"--layouts entry {spec!r} is not PROCESSESxDEVICES:DATA,FSDP,TENSOR, "
      "e.g. 2x4:1,8,1."
    ) from None
  return processes, devices, shape


def train(
  stage: str, spec: str, workdir: str, data_dir: str, steps: int, batch: int
) -> dict[int, float]:
  """Runs train.py on one layout; returns its logged losses, step -> loss.

  Raises:
    RuntimeError: with the log's path if the run fails.
  """
  processes, devices, mesh = parse_layout(spec)
  command = [
    sys.executable, "-m", "imagen_video_jax.train",
    f"--config=configs/{stage}.py:runlocal", f"--workdir={workdir}",
    f"--config.data.data_dir={data_dir}", f"--config.batch_size={batch}",
    f"--config.mesh.shape={mesh}", f"--config.total_steps={steps}",
    "--config.log_every=1", "--config.optim.warmup_steps=1",
  ]  # fmt: skip
  log = f"{workdir}.log"
  if processes > 1:
    launch = ["bash", "launch/multihost.sh", str(processes), str(devices)]
    command = [*launch, f"{workdir}.logs", "--", *command]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = (
    f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
  )
  with open(log, "wb") as f:
    status = subprocess.run(command, cwd=_ROOT, env=env, stdout=f, stderr=f).returncode
  if status:
    raise RuntimeError(f"{stage} on {spec} exited with {status}; see {log}")
  return reporting.logged_scalars(workdir, "loss")


def main(argv: list[str]) -> None:
  del argv
  layouts = _LAYOUTS.value
  for spec in layouts:
    parse_layout(spec)  # Every entry checked before the first run.
  root = tempfile.mkdtemp(prefix="layouts.")
  data_dir = os.path.join(root, "tfds")
  for config in ("videos", "images"):
    data_build.build_dataset(
      "bouncing_digits", data_dir, config=config, train_size=16, test_size=4
    )
  steps = _STEPS.value
  print(f"global batch {_BATCH.value}, {steps} steps; runs in {root}")
  print("| stage | processes x devices | mesh | losses | max abs diff | seconds |")
  print("|---|---|---|---|---|---|")
  for stage in _STAGES.value:
    reference = None
    for i, spec in enumerate(layouts):
      t0 = time.time()
      workdir = os.path.join(root, f"{stage}_{i}")
      losses = train(stage, spec, workdir, data_dir, steps, _BATCH.value)
      values = np.array([losses[s] for s in range(1, steps + 1)])
      reference = values if reference is None else reference
      hosts, mesh = spec.split(":")
      print(
        f"| {stage} | {hosts} | ({mesh}) | {', '.join(f'{v:.6f}' for v in values)} "
        f"| {np.abs(values - reference).max():.1e} | {time.time() - t0:.0f} |",
        flush=True,
      )


if __name__ == "__main__":
  app.run(main)
