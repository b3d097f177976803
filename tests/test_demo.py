"""Tests of imagen_video_jax/demo.py: the demo's prompts, table and contact sheet."""

import json
import math

import numpy as np
import PIL.Image
import pytest
from clu import metric_writers

from imagen_video_jax import bouncing_digits, demo


def test_prompts_are_the_test_videos_captions(tmp_path):
  path = tmp_path / "prompts.txt"
  demo.write_prompts(str(path), num=5)
  lines = path.read_text(encoding="utf-8").splitlines()
  assert lines == [bouncing_digits.render_video("test", i)["caption"] for i in range(5)]


def write_events(workdir, losses):
  writer = metric_writers.create_default_writer(str(workdir), asynchronous=False)
  for step, loss in losses.items():
    writer.write_scalars(step, {"loss": loss, "lr": 1e-3})
  writer.close()


def test_training_progress_reads_the_last_loss_and_sums_runs(tmp_path):
  write_events(tmp_path, {50: 0.5, 100: 0.25})
  summary = demo.training_progress(str(tmp_path))
  assert summary["steps"] == 100
  assert summary["loss"] == pytest.approx(0.25)
  assert 0 <= summary["minutes"] < 1
  none = demo.training_progress(str(tmp_path / "none"))
  assert math.isnan(none["loss"]) and math.isnan(none["minutes"])


def test_stage_minutes_leave_out_the_time_between_runs(tmp_path):
  import tensorflow as tf

  # Two runs' event files, an hour apart; each ran 3 minutes.
  for i, start in enumerate((1_000_000.0, 1_003_600.0)):
    path = str(tmp_path / f"events.out.tfevents.{i}")
    with tf.io.TFRecordWriter(path) as w:
      for dt, step, loss in ((0.0, 10 * i, 1.0), (180.0, 10 * i + 5, 0.5 - 0.1 * i)):
        event = tf.compat.v1.Event(wall_time=start + dt, step=step)
        event.summary.value.add(tag="loss", tensor=tf.make_tensor_proto(loss))
        w.write(event.SerializeToString())
  summary = demo.training_progress(str(tmp_path))
  assert summary["minutes"] == pytest.approx(6.0)
  assert summary["steps"] == 15 and summary["loss"] == pytest.approx(0.4)


def fake_samples(sample_dir, videos, npy=True):
  sample_dir.mkdir(parents=True)
  with open(sample_dir / "samples.jsonl", "w") as f:
    for i, video in enumerate(videos):
      files = {"png": f"{i:04d}.png"}
      if npy:
        files["npy"] = f"{i:04d}.npy"
        np.save(sample_dir / files["npy"], video)
      record = {"prompt": f"prompt {i}", "seed": i, "files": files, "seconds": 2.0}
      f.write(json.dumps(record) + "\n")


def test_sheet_has_a_row_of_frames_per_sample(tmp_path):
  rng = np.random.default_rng(0)
  videos = rng.integers(0, 256, (3, 4, 6, 5, 3), dtype=np.uint8)
  fake_samples(tmp_path / "samples", videos)
  out = tmp_path / "sheet.png"
  assert demo.write_sheet(str(tmp_path / "samples"), str(out), num=2, pad=1) == [
    "prompt 0",
    "prompt 1",
  ]
  sheet = np.asarray(PIL.Image.open(out))
  assert sheet.shape == (2 * (6 + 2), 4 * (5 + 1) + 1, 3)
  # Sample 1, frame 2 sits in row 1, column 2 of the grid.
  np.testing.assert_array_equal(
    sheet[8 + 1 : 8 + 7, 1 + 2 * 6 : 1 + 2 * 6 + 5], videos[1, 2]
  )
  assert (tmp_path / "sheet.txt").read_text() == "prompt 0\nprompt 1\n"


def test_sheet_names_a_sample_without_npy(tmp_path):
  fake_samples(tmp_path / "samples", np.zeros((1, 2, 4, 4, 3), np.uint8), npy=False)
  with pytest.raises(ValueError, match="0000.png.*no npy file"):
    demo.write_sheet(str(tmp_path / "samples"), str(tmp_path / "sheet.png"))


def test_report_has_training_and_metrics(tmp_path):
  write_events(tmp_path / "base", {100: 0.125})
  fake_samples(tmp_path / "samples", np.zeros((2, 2, 4, 4, 3), np.uint8))
  metrics = {"alignment/all": {"samples": 0.5, "ground_truth": 0.95}}
  (tmp_path / "samples" / "metrics.json").write_text(json.dumps({"metrics": metrics}))
  text = demo.report(str(tmp_path), ["base"])
  assert "base" in text and "100" in text and "0.1250" in text
  assert "alignment/all" in text and "0.9500" in text
  assert "samples per second: 0.500" in text


def test_command_line_writes_prompts_and_reports(tmp_path):
  import subprocess
  import sys

  def run(*args):
    return subprocess.run(
      [sys.executable, "-m", "imagen_video_jax.demo", *args],
      capture_output=True,
      text=True,
      check=True,
    ).stdout

  run("prompts", f"--out={tmp_path}/prompts.txt", "--num=3")
  assert len((tmp_path / "prompts.txt").read_text().splitlines()) == 3
  write_events(tmp_path / "base", {10: 0.5})
  fake_samples(tmp_path / "samples", np.zeros((2, 2, 4, 4, 3), np.uint8))
  metrics = {"fvd": {"samples": 12.0}}
  (tmp_path / "samples" / "metrics.json").write_text(json.dumps({"metrics": metrics}))
  out = run("report", f"--run={tmp_path}", "--stages=base")
  assert "fvd" in out and (tmp_path / "samples_sheet.png").exists()


def test_table1_rows_count_model_evaluations_and_seconds(tmp_path):
  """One row per evaluated folder; guidance doubles evaluations, students don't."""
  guided = {"kind": "constant", "w": 2.0, "high": 15.0, "low": 1.0}
  unguided = dict(guided, w=0.0)
  runs = {
    "a_undistilled": {
      "base": dict(steps=256, guidance=guided, distilled=False),
      "tsr1": dict(steps=128, guidance=unguided, distilled=False),
    },
    "b_distilled": {
      "base": dict(steps=8, guidance=guided, distilled=True),
      "tsr1": dict(steps=8, guidance=unguided, distilled=True),
    },
  }
  for name, stages in runs.items():
    folder = tmp_path / name
    folder.mkdir()
    records = [
      dict(index=i, prompt="p", files={}, stages=stages, seconds=0.5 + i)
      for i in range(2)
    ]
    (folder / "samples.jsonl").write_text(
      "".join(json.dumps(r) + "\n" for r in records)
    )
    metrics = {
      f"alignment/{p}": {"samples": 0.5, "ground_truth": 0.9} for p in demo._PARTS
    }
    metrics.update(
      {k: {"samples": 0.25, "ground_truth": 0.75} for k in demo._FRAME_COLUMNS}
    )
    metrics["fvd"] = {"samples": 123.4}
    (folder / "metrics.json").write_text(json.dumps({"metrics": metrics}))
  rows = demo.table(str(tmp_path)).splitlines()
  assert len(rows) == 5 and rows[-1].startswith("| ground truth |")
  a, b = (r.split(" | ") for r in rows[2:4])
  assert a[1:3] == ["256/128", "w=2"] and b[1] == "8/8"
  assert a[-1] == "640 |" and b[-1] == "16 |"  # 2 * 256 + 128; 8 + 8.
  assert a[-2] == "64.0" and a[-3] == "123.4"  # 64 * mean(0.5, 1.5) seconds.
  assert a[-6:-3] == ["0.250"] * 3  # The per-frame columns.
  assert rows[-1].split(" | ")[-6:-3] == ["0.750"] * 3
