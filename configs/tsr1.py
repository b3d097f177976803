r"""Stage 2, TSR: 32x40x24 at 6 fps from the base's 16x40x24 at 3 fps; 1.7B parameters.

Train the paper stage on every worker of a TPU VM pod (launch/tpu.sh's header
gives --create and --setup for a new pod; arguments after `--` override keys):
  bash launch/tpu.sh --tpu=TPU --zone=ZONE --stage=tsr1 \
    --config=configs/tsr1.py:paper --workdir=gs://BUCKET/tsr1
the demo stage on one CPU (`:runlocal` is tiny, for tests):
  python -m imagen_video_jax.train --config=configs/tsr1.py:demo --workdir=runs/tsr1
and distil the trained stage (paper Sec. 2.7):
  python -m imagen_video_jax.distill --config=configs/tsr1.py:demo \
    --config.distill.teacher=runs/tsr1 --workdir=runs/tsr1_distilled
launch/demo.sh trains the demo's base, tsr1 and ssr1, and
launch/distill_demo.sh distils them.
"""

import ml_collections

from configs import common

# Paper Fig. 6 / Sec. 2.2.
PAPER_UNET = dict(
  base_channels=256,
  channel_mult=(1, 2, 4, 4),
  num_res_blocks=(3, 4, 6, 9),
  spatial_attention=(False, True, True, True),
  cross_attention=(False, True, True, True),
  temporal_mixing=("conv",) * 4,
  embed_dim=1024,
)


def recipe(config: ml_collections.ConfigDict, variant: str) -> None:
  if variant != "demo":
    return
  # Minutes on a 2-core CPU (launch/demo.sh). The demo trains on 8x8 crops,
  # where the lowest level is 2x2 (4x4 when sampling full frames); without
  # spatial attention it trains faster and keeps as many digits
  # (docs/EXPERIMENTS.md#2026-11-25-tsr1-without-spatial-attention-8-sr-sampling-steps).
  config.model.spatial_attention = (False, False, False)
  # Copying the base's digits is what these steps must learn; crops and
  # 4-frame runs buy more steps in the same minutes
  # (docs/EXPERIMENTS.md#2026-11-25-tsr1-on-8x8-crops,
  # docs/EXPERIMENTS.md#2026-11-30-sr-stages-on-4-frame-runs).
  config.stage.crop = (8, 8)
  config.stage.crop_frames = 4  # Runs of 4 frames (2 input frames): 3x the steps/s.
  config.total_steps = 1200
  config.optim.warmup_steps = 20  # 100 would be most of so short a run.
  # It keeps more digits than 2e-3
  # (docs/EXPERIMENTS.md#2026-11-24-tsr1-learning-rate-3e-3).
  config.optim.learning_rate = 3e-3
  # Videos only: single frames teach a temporal SR stage nothing temporal, and
  # on a CPU the second compiled step (image batches) costs most of a minute.
  config.data.mixture = ml_collections.ConfigDict({"bouncing_digits/videos": 1.0})


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return common.stage_from_arg("tsr1", arg, PAPER_UNET, dict(temporal="conv"), recipe)
