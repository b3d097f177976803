"""benchmarks/train.py runs as its README command does and prints its table."""

import subprocess
import sys

import pytest


@pytest.mark.slow  # A stage compiled in a fresh process: about a minute.
def test_train_benchmark_prints_a_row_per_stage_and_program():
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "imagen_video_jax.benchmarks.train",
      "--variant=runlocal",
      "--stages=base",
      "--steps=1",
    ],
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [line.split(" | ") for line in out.stdout.splitlines() if " | " in line]
  header, (row,) = rows[0], rows[1:]
  assert header[:2] == ["stage", "program"] and row[:2] == ["base", "train"]
  values = dict(zip(header, row))
  assert float(values["steps/s"]) > 0 and float(values["step MiB"]) > 0
  assert int(values["batch"]) > 0
