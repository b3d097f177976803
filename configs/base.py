r"""Stage 1, base: 16x40x24 frames at 3 fps from text; 5.6B parameters.

Train the paper stage on every worker of a TPU VM pod (launch/tpu.sh's header
gives --create and --setup for a new pod; arguments after `--` override keys):
  bash launch/tpu.sh --tpu=TPU --zone=ZONE --stage=base \
    --config=configs/base.py:paper --workdir=gs://BUCKET/base
the demo stage on one CPU (`:runlocal` is tiny, for tests):
  python -m imagen_video_jax.train --config=configs/base.py:demo --workdir=runs/base
and distil the trained stage (paper Sec. 2.7):
  python -m imagen_video_jax.distill --config=configs/base.py:demo \
    --config.distill.teacher=runs/base --workdir=runs/base_distilled
launch/demo.sh trains the demo's base, tsr1 and ssr1, and
launch/distill_demo.sh distils them.
"""

import ml_collections

from configs import common

# Paper Fig. 6 / Sec. 2.2.
PAPER_UNET = dict(
  base_channels=256,
  channel_mult=(1, 2, 4, 8),
  num_res_blocks=(3, 4, 8, 13),
  spatial_attention=(False, True, True, True),
  cross_attention=(False, True, True, True),
  temporal_mixing=("attention",) * 4,
  embed_dim=1024,
)


def recipe(config: ml_collections.ConfigDict, variant: str) -> None:
  if variant != "demo":
    return
  # About 16 minutes on a 2-core CPU (launch/demo.sh). The digit's identity is
  # what the base learns last; the settings below are for it.
  config.total_steps = 1850
  config.ckpt_every = 1000  # A save stalls training ~10 s on 2 cores.
  # 40% of the batches are images: one holds B*T = 128 glyphs for the cost of
  # 16 clips (docs/EXPERIMENTS.md#2026-11-24-40-percent-image-batches-for-the-base).
  config.data.mixture = ml_collections.ConfigDict(
    {"bouncing_digits/videos": 0.6, "bouncing_digits/images": 0.4}
  )
  # The digit is learning-rate hungry, the motion axis is not
  # (docs/EXPERIMENTS.md#2026-11-24-base-learning-rate-3e-3-and-guidance-w-2) ...
  config.optim.learning_rate = 3e-3
  # ... and a decay over the last 10% gives both
  # (docs/EXPERIMENTS.md#2026-11-25-base-learning-rate-decay-over-the-last-10-percent).
  config.optim.schedule = "wsd"
  config.optim.decay_fraction = 0.1


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return common.stage_from_arg(
    "base", arg, PAPER_UNET, dict(temporal="attention"), recipe
  )
