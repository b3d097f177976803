"""End-to-end test of the evaluate binary on a sample directory it writes itself."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

from imagen_video_jax import bouncing_digits as bd
from imagen_video_jax import evaluate, video_io
from imagen_video_jax.metrics import alignment
from imagen_video_jax.metrics import frames as frame_stats


def _wrong_colour(caption: str) -> str:
  colour, digit, axis = alignment.parse_prompt(caption)
  colour = bd.COLOURS[(bd.colour_id(colour) + 1) % len(bd.COLOURS)]
  return bd.video_caption(colour, digit, axis)


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory):
  """6 ground-truth test videos (16x32x32) as samples; 2 with a wrong colour.

  Five are stored as npy, the last only as mp4 (decoded by the evaluator).
  """
  root = str(tmp_path_factory.mktemp("samples"))
  videos, captions = alignment.reference_videos("test", 6, 16, 32, 32, seed=7)
  prompts = [*captions[:4], *(_wrong_colour(c) for c in captions[4:])]
  with open(os.path.join(root, "samples.jsonl"), "w") as f:
    for i, (video, prompt) in enumerate(zip(videos, prompts)):
      files = video_io.write_sample(root, i, video, fps=8, save_npy=i < 5)
      f.write(json.dumps({"prompt": prompt, "seed": i, "files": files}) + "\n")
  return root


def test_load_samples_reads_npy_and_mp4(sample_dir, caplog):
  with caplog.at_level("WARNING"):
    videos, prompts = evaluate.load_samples(sample_dir)
  assert "1 of 6 samples judged from their lossy mp4" in caplog.text
  want, _ = alignment.reference_videos("test", 6, 16, 32, 32, seed=7)
  assert videos.shape == (6, 16, 32, 32, 3) and len(prompts) == 6
  np.testing.assert_array_equal(videos[:5], want[:5])
  # The mp4 is H.264 (lossy): close, not equal.
  assert np.abs(videos[5].astype(int) - want[5]).mean() < 8


def test_evaluate_binary_end_to_end(sample_dir, capsys):
  flags.FLAGS.mark_as_parsed()
  with flagsaver.flagsaver(
    samples=sample_dir,
    metrics=["alignment"],
    num_reference=40,
    reference="bouncing_digits:test",
  ):
    evaluate.main([])
  table = capsys.readouterr().out
  assert "alignment/all" in table and "ground truth" in table
  with open(os.path.join(sample_dir, "metrics.json")) as f:
    result = json.load(f)
  rows = result["metrics"]
  assert result["num_samples"] == 6 and result["shape"] == [16, 32, 32]
  assert result["num_reference"] == 40
  assert rows["alignment/colour"]["samples"] == pytest.approx(4 / 6)
  assert rows["alignment/axis"]["samples"] == 1.0
  assert rows["alignment/all"]["samples"] <= 4 / 6
  assert rows["alignment/all"]["ground_truth"] >= 0.85
  assert f"{rows['alignment/all']['samples']:.4f}" in table


def test_evaluate_rejects_bad_input(tmp_path, sample_dir):
  with pytest.raises(ValueError, match="No samples.jsonl"):
    evaluate.load_samples(str(tmp_path))
  videos, prompts = evaluate.load_samples(sample_dir)
  with pytest.raises(ValueError, match="bleu"):
    evaluate.evaluate(videos, prompts, None, ["bleu"])
  with pytest.raises(ValueError, match="need a --reference"):
    evaluate.evaluate(videos, prompts, None, ["fvd"])
  with pytest.raises(ValueError, match="a cat"):
    evaluate.evaluate(videos, [*prompts[:5], "a cat"], None, ["alignment"])
  with pytest.raises(ValueError, match="inception_weights"):
    evaluate.evaluate(videos, prompts, (videos, prompts), ["fid"])
  with pytest.raises(ValueError, match="neither DATASET:SPLIT"):
    evaluate.load_reference("bouncing_digits", "", 2, (16, 32, 32))


def test_sample_records_errors_name_file_and_line(tmp_path):
  path = tmp_path / "samples.jsonl"
  good = json.dumps({"prompt": "p", "files": {"npy": "0000.npy"}})
  path.write_text(f"{good}\n\n{json.dumps({'prompt': 'p'})}\n")
  with pytest.raises(ValueError, match=r"samples.jsonl:3: not a sample record"):
    evaluate.read_records(str(tmp_path))
  path.write_text(f"{good}\n{{oops\n")
  with pytest.raises(ValueError, match=r"samples.jsonl:2: not a sample record"):
    evaluate.load_samples(str(tmp_path))
  path.write_text(f"\n{good}\n")
  assert evaluate.read_records(str(tmp_path)) == [(2, json.loads(good))]


def test_the_binarys_errors_are_one_line(tmp_path):
  # As the other binaries: exit status 1 and one error line, no traceback.
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "imagen_video_jax.evaluate",
      f"--samples={tmp_path / 'none'}",
    ],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=tmp_path,  # From any folder.
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )
  assert proc.returncode == 1
  errors = [line for line in proc.stderr.splitlines() if line.startswith("E")]
  assert len(errors) == 1 and "ValueError: No samples.jsonl in sample" in errors[0]
  assert "Traceback" not in proc.stderr


def test_one_damaged_frame_index_is_caught_where_the_clip_vote_hides_it():
  # 40 ground-truth clips (16x32x32) as samples, damaged at two frame indices:
  # frame 15 of each replaced by frame 15 of another clip (its digit, most
  # often another), frame 9 drawn 1.6x brighter. The clip-level digit vote
  # barely moves; the per-frame rows name both indices.
  videos, captions = alignment.reference_videos("test", 40, 16, 32, 32)
  damaged = videos.copy()
  damaged[:, 15] = np.roll(videos[:, 15], 1, axis=0)
  damaged[:, 9] = np.clip(videos[:, 9].astype(np.float32) * 1.6, 0, 255)
  rows = evaluate.evaluate(
    damaged, captions, (videos, captions), ["alignment", "frames"]
  )
  truth = rows["alignment/digit"]["ground_truth"]
  assert rows["alignment/digit"]["samples"] >= truth - 0.05
  digit = [rows[f"frames/digit/{k}"]["samples"] for k in range(16)]
  assert digit[15] < 0.4 and min(digit[:15]) >= 0.8, digit
  assert rows["frames/digit/worst"]["samples"] == digit[15]
  intensity = [rows[f"frames/intensity/{k}"]["samples"] for k in range(16)]
  assert intensity[9] > 1.3 and max(abs(i - 1) for i in intensity[:9]) < 0.1
  assert rows["frames/intensity/worst"]["samples"] > 0.3
  assert rows["frames/intensity/worst"]["ground_truth"] < 0.1
  neighbours = [rows[f"frames/neighbours/{k}"]["samples"] for k in range(16)]
  truth_neighbours = [rows[f"frames/neighbours/{k}"]["ground_truth"] for k in range(16)]
  odd = [abs(a - b) for a, b in zip(neighbours, truth_neighbours)]
  # The damaged frames stand out, and by half as much their neighbours.
  assert np.argmax(odd) == 15 and odd[9] > 3 * max(odd[k] for k in range(1, 7)), odd
  table = evaluate.format_table(rows)
  assert "frames/digit/worst" in table and "\n15 " in table


def test_frame_profile_against_a_hand_computed_one():
  # Uniform frames of 10, 20, 40, 40: distances to the neighbours' mean 10
  # (one neighbour at the ends), 5, 10, 0, median 7.5; means over median 30.
  videos = np.broadcast_to(
    np.array([10, 20, 40, 40], np.uint8)[None, :, None, None, None], (2, 4, 3, 3, 3)
  )
  profile = frame_stats.profile(videos)
  np.testing.assert_allclose(profile["neighbours"], [4 / 3, 2 / 3, 4 / 3, 0], rtol=1e-6)
  np.testing.assert_allclose(
    profile["intensity"], [1 / 3, 2 / 3, 4 / 3, 4 / 3], rtol=1e-6
  )
