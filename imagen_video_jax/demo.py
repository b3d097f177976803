r"""Helpers of `launch/demo.sh`: the prompt file and the final table.

  python -m imagen_video_jax.demo prompts --out=runs/demo/prompts.txt --num=64
  python -m imagen_video_jax.demo report --run=runs/demo
  python -m imagen_video_jax.demo table --run=runs/demo/table1

Prompts are the captions of the first `num` bouncing-digits test videos, so the
judge's ground-truth ceiling is measured on the same prompts. The report reads
each stage's TensorBoard events (final loss, steps, wall-clock minutes of the
run that trained it) and the evaluator's metrics.json, and writes
RUN/samples_sheet.png: the first samples' frames, a row per sample, with
RUN/samples_sheet.txt giving each row's prompt. The table (paper Table 1,
launch/distill_demo.sh) has a row per evaluated sample folder of RUN: steps per
stage, guidance, alignment and its parts, the per-frame measures (each frame
index's digit accuracy, mean and worst; the largest intensity deviation of an
index), FVD, sampling seconds per batch of 64 (compiles excluded) and model
evaluations per sample.
"""

import glob
import json
import os

import numpy as np
from absl import app, flags

from imagen_video_jax import bouncing_digits, evaluate, files, video_io


def _define_flags() -> dict[str, flags.FlagHolder]:
  # Defined only when run as a script, so importing this module adds no flags.
  return {
    "out": flags.DEFINE_string("out", None, "prompts: the prompt file to write."),
    "num": flags.DEFINE_integer("num", 64, "prompts: number of test prompts."),
    "run": flags.DEFINE_string("run", "runs/demo", "report: the demo's run folder."),
    "stages": flags.DEFINE_list("stages", ["base", "tsr1", "ssr1"], "report: stages."),
  }


def write_prompts(path: str, num: int, split: str = "test", seed: int = 0) -> None:
  """Writes the captions of `split` videos 0..num-1, one per line."""
  lines = [bouncing_digits.render_video(split, i, seed)["caption"] for i in range(num)]
  files.write_text(path, "\n".join(lines) + "\n")


def training_progress(workdir: str) -> dict[str, float]:
  """Last step, last logged loss and training minutes of a stage's workdir.

  Every run (a resume too) writes its own events file; the minutes are the sum
  of each file's first-to-last event span, so time between runs is not counted.
  """
  import tensorflow as tf  # Only to read TensorBoard event files.

  step, loss, spans = 0, float("nan"), []
  for path in sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*"))):
    times = []
    for record in tf.data.TFRecordDataset(path):
      event = tf.compat.v1.Event.FromString(record.numpy())
      times.append(event.wall_time)
      for value in event.summary.value:
        if value.tag == "loss":
          step, loss = event.step, float(tf.make_ndarray(value.tensor))
    if times:
      spans.append((max(times) - min(times)) / 60)
  minutes = sum(spans) if spans else float("nan")
  return {"steps": step, "loss": loss, "minutes": minutes}


def write_sheet(sample_dir: str, out: str, num: int = 8, pad: int = 2) -> list[str]:
  """Writes `out` (png): the frames of the first `num` samples, a row each.

  Reads the samples' lossless NNNN.npy (sample.py --save_npy). Returns the rows'
  prompts, also written to `out` with a .txt suffix.

  Raises:
    ValueError: naming the sample whose npy file is missing.
  """
  records = [r for _, r in evaluate.read_records(sample_dir)[:num]]
  rows = []
  for r in records:
    if "npy" not in r["files"]:
      raise ValueError(f"Sample {r['files']} in {sample_dir!r} has no npy file.")
    video = np.load(os.path.join(sample_dir, r["files"]["npy"]))  # [T, H, W, 3]
    rows.append(video_io.contact_sheet(video, columns=video.shape[0], pad=pad))
  video_io.write_png(out, np.concatenate(rows, axis=0))
  prompts = [r["prompt"] for r in records]
  with open(os.path.splitext(out)[0] + ".txt", "w", encoding="utf-8") as f:
    f.write("\n".join(prompts) + "\n")
  return prompts


def report(run: str, stages: list[str]) -> str:
  """The demo's table: training per stage, then the evaluator's metrics."""
  rows = [f"{'stage':<8} {'steps':>7} {'minutes':>8} {'final loss':>11}"]
  for name in stages:
    s = training_progress(os.path.join(run, name))
    rows.append(f"{name:<8} {s['steps']:>7} {s['minutes']:>8.1f} {s['loss']:>11.4f}")
  sample_dir = os.path.join(run, "samples")
  with open(os.path.join(sample_dir, "metrics.json"), encoding="utf-8") as f:
    metrics = json.load(f)["metrics"]
  seconds = [r["seconds"] for _, r in evaluate.read_records(sample_dir)]
  rows += ["", evaluate.format_table(metrics)]
  rows.append(f"samples per second: {len(seconds) / sum(seconds):.3f}")
  return "\n".join(rows)


def model_evaluations(stage: dict) -> int:
  """U-Net evaluations per sample of a stage's samples.jsonl settings.

  Guidance (eq. 5) costs two per step, unless the stage is a distilled student
  (w is its input) or w = 0 everywhere.
  """
  g = stage["guidance"]
  guided = g["kind"] == "oscillating" or g["w"] != 0
  return stage["steps"] * (2 if guided and not stage.get("distilled") else 1)


_PARTS = ("all", "digit", "colour", "axis", "consistency")
# Per-frame columns (evaluate's frames/ rows): each frame index's digit
# accuracy, mean and worst, and the largest intensity deviation of an index.
_FRAME_COLUMNS = ("frames/digit/mean", "frames/digit/worst", "frames/intensity/worst")


def _cell(value: float | None) -> str:
  return "" if value is None else f"{value:.3f}" if value < 10 else f"{value:.1f}"


def table(run: str) -> str:
  """Markdown rows of paper Table 1: one per evaluated sample folder of `run`."""
  header = (
    "| run | steps per stage | base guidance | alignment | digit | colour | axis "
    "| consistency | frame digit | worst frame digit | worst frame intensity "
    "| FVD | s per batch of 64 | evaluations per sample |"
  )
  rows = [header, "|" + "---|" * header.count(" | ") + "---|"]
  truth = None
  for folder in sorted(glob.glob(os.path.join(run, "*", "metrics.json"))):
    sample_dir = os.path.dirname(folder)
    with open(folder, encoding="utf-8") as f:
      metrics = json.load(f)["metrics"]
    records = [r for _, r in evaluate.read_records(sample_dir)]
    stages = records[0]["stages"]
    seconds = np.mean([r["seconds"] for r in records])
    base = stages.get("base", {}).get("guidance", {})
    kind = base.get("kind", "")
    guide = (
      f"w={base['w']:g}"
      if kind == "constant"
      else f"{kind} {base['high']:g}/{base['low']:g}"
    )
    cells = [
      os.path.basename(sample_dir),
      "/".join(str(s["steps"]) for s in stages.values()),
      guide,
    ]
    parts = [f"alignment/{p}" for p in _PARTS] + list(_FRAME_COLUMNS) + ["fvd"]
    cells += [_cell(metrics.get(k, {}).get("samples")) for k in parts]
    cells += [f"{64 * seconds:.1f}", str(sum(map(model_evaluations, stages.values())))]
    rows.append("| " + " | ".join(cells) + " |")
    truth = truth or [metrics.get(k, {}).get("ground_truth") for k in parts[:-1]]
  if truth:
    cells = ["ground truth", "", "", *map(_cell, truth), "", "", ""]
    rows.append("| " + " | ".join(cells) + " |")
  return "\n".join(rows)


def main(argv: list[str], args: dict[str, flags.FlagHolder]) -> None:
  if len(argv) != 2 or argv[1] not in ("prompts", "report", "table"):
    raise app.UsageError("usage: python -m imagen_video_jax.demo prompts|report|table")
  if argv[1] == "table":
    print(table(args["run"].value))
    return
  if argv[1] == "prompts":
    if not args["out"].value:
      raise app.UsageError("prompts needs --out")
    write_prompts(args["out"].value, args["num"].value)
  else:
    run = args["run"].value
    print(report(run, args["stages"].value))
    sheet = os.path.join(run, "samples_sheet.png")
    write_sheet(os.path.join(run, "samples"), sheet)
    print(f"Contact sheet of the first samples: {sheet}")


if __name__ == "__main__":
  _args = _define_flags()
  app.run(lambda argv: main(argv, _args))
