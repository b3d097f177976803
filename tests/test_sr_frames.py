"""benchmarks.sr_frames: one SR stage judged frame by frame on ground truth."""

import flax
import jax
import numpy as np
from test_sample import _NoData

from imagen_video_jax import checkpointing, config_utils, optimizers, train_lib
from imagen_video_jax.benchmarks import sr_frames
from imagen_video_jax.metrics import alignment
from imagen_video_jax.models import stage_model


def test_the_stage_is_sampled_on_each_captions_clip_and_judged_per_frame(tmp_path):
  # A freshly initialised tsr1 (random but for its zero output layer). What is
  # checked is the judge's plumbing: each caption's clip at the stage's input
  # shape (frame skipping of the clip at its output shape), samples per seed,
  # and the evaluator's per-frame rows for every output frame.
  config = config_utils.load_config("configs/tsr1.py:runlocal")
  workdir = str(tmp_path / "tsr1")
  checkpointing.prepare_workdir(workdir, config)
  model = stage_model.make_model(config)
  tx, _ = optimizers.make_optimizer(config.optim, 10)
  state = jax.device_get(train_lib.make_init_fn(config, model, tx)(jax.random.key(0)))
  state = jax.tree.map(np.asarray, flax.core.meta.unbox(state))
  ckpt = checkpointing.Checkpointer(
    workdir, stage=checkpointing.stage_identity(config), async_save=False
  )
  assert ckpt.save(1, state, _NoData())
  ckpt.close()
  cascade = config_utils.load_config("configs/cascade.py:runlocal")
  cascade.workdir_root = str(tmp_path)
  inputs, out, truth, captions = sr_frames.stage_outputs(cascade, "tsr1", num=4)
  want_inputs, want_captions = alignment.reference_videos("test", 4, 2, 8, 8)
  np.testing.assert_array_equal(inputs, want_inputs)
  assert captions == want_captions
  assert truth.shape == out.shape == (4, 4, 8, 8, 3) and out.dtype == np.uint8
  assert np.abs(truth[:, ::2].astype(float) - inputs).mean() < 1  # Frame skipping.
  again = sr_frames.stage_outputs(cascade, "tsr1", num=4, seed=1)[1]
  assert not np.array_equal(again, out)  # Another seed, other samples.
  rows = sr_frames.judge_stage(cascade, "tsr1", num=4)
  for stat in ("digit", "intensity", "neighbours"):
    assert {f"frames/{stat}/{k}" for k in range(4)} <= rows.keys()
    assert "ground_truth" in rows[f"frames/{stat}/3"]
