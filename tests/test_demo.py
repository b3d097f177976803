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


def test_stage_summary_reads_the_last_loss(tmp_path):
  write_events(tmp_path, {50: 0.5, 100: 0.25})
  summary = demo.stage_summary(str(tmp_path))
  assert summary["steps"] == 100
  assert summary["loss"] == pytest.approx(0.25)
  assert 0 <= summary["minutes"] < 1
  assert math.isnan(demo.stage_summary(str(tmp_path / "none"))["loss"])


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
