r"""One super-resolution stage alone, judged frame by frame on ground-truth inputs.

  python -m imagen_video_jax.benchmarks.sr_frames --stage=tsr1 \
    --config=configs/cascade.py:demo,workdir_root=runs/demo [--num=64] [--seed=0]

Takes the captions and clips of the first --num bouncing-digits test videos,
the clips brought to the stage's input shape as its training data is (frame
skipping, antialiased resizing), samples the stage on them with the cascade's
settings for it (its checkpoint, steps, sampler, augmentation), and prints the
evaluator's clip-level alignment and per-frame table against the same clips at
the stage's output shape. A stage's own per-frame faults (an extrapolated last
frame, the frames a TSR stage fills in) show here without the stages before it.
"""

import jax
import numpy as np
from absl import app, flags

from imagen_video_jax import evaluate, sample, video_io
from imagen_video_jax.cascade import pipeline, stages
from imagen_video_jax.metrics import alignment
from imagen_video_jax.models import stage_model, text_encoder

_STAGE = flags.DEFINE_string("stage", "tsr1", "The SR stage to judge.")
_NUM = flags.DEFINE_integer("num", 64, "Test clips (the demo's prompts).")


def stage_outputs(
  cascade, name: str, num: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
  """Stage `name` sampled on the first `num` test clips.

  Returns:
    (inputs uint8 [N, T', H', W', 3] at the stage's input shape, outputs
    uint8 [N, T, H, W, 3], the same clips at the output shape, N captions).
  """
  loaded = sample.load_cascade(cascade, name, from_video=True)
  (config,), (settings,), (params,) = loaded.configs, loaded.settings, loaded.ema
  t, h, w = stages.input_shape(config).size
  inputs, captions = alignment.reference_videos("test", num, t, h, w)
  truth, _ = alignment.reference_videos(
    "test", num, config.stage.frames, config.stage.height, config.stage.width
  )
  emb, mask = text_encoder.TextEncoder.from_config(loaded.text_config).encode(captions)
  variables = stage_model.as_variables(stage_model.sampling_params(params, config))
  keys = np.stack([jax.random.key_data(jax.random.key(seed + i)) for i in range(num)])
  stage_fn = jax.jit(pipeline.make_stage_fn(config, settings))
  prev = inputs.astype(np.float32) / 127.5 - 1.0
  out = stage_fn(variables, keys, emb, np.asarray(mask), prev)
  return inputs, video_io.to_uint8(jax.device_get(out)), truth, captions


def judge_stage(
  cascade, name: str, num: int, seed: int = 0
) -> dict[str, dict[str, float]]:
  """The evaluator's alignment and frames rows of stage `name` on `num` clips."""
  _, out, truth, captions = stage_outputs(cascade, name, num, seed)
  return evaluate.evaluate(out, captions, (truth, captions), ["alignment", "frames"])


def main(argv: list[str]) -> None:
  del argv
  # --config (the cascade) and --seed are the sampler's, defined by `sample`.
  cascade, seed = flags.FLAGS["config"].value, flags.FLAGS["seed"].value
  rows = judge_stage(cascade, _STAGE.value, _NUM.value, seed or 0)
  print(evaluate.format_table(rows))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
