r"""Stage 3, SSR: 32x80x48 at 6 fps from tsr1's 32x40x24; 1.4B parameters.

Train the paper stage on every worker of a TPU VM pod (launch/tpu.sh's header
gives --create and --setup for a new pod; arguments after `--` override keys):
  bash launch/tpu.sh --tpu=TPU --zone=ZONE --stage=ssr1 \
    --config=configs/ssr1.py:paper --workdir=gs://BUCKET/ssr1
the demo stage on one CPU (`:runlocal` is tiny, for tests):
  python -m imagen_video_jax.train --config=configs/ssr1.py:demo --workdir=runs/ssr1
and distil the trained stage (paper Sec. 2.7):
  python -m imagen_video_jax.distill --config=configs/ssr1.py:demo \
    --config.distill.teacher=runs/ssr1 --workdir=runs/ssr1_distilled
launch/demo.sh trains the demo's base, tsr1 and ssr1, and
launch/distill_demo.sh distils them.
"""

import ml_collections

from configs import common

# Paper Fig. 6 / Sec. 2.2.
PAPER_UNET = dict(
  base_channels=256,
  channel_mult=(1, 2, 4, 4),
  num_res_blocks=(2, 4, 4, 7),
  spatial_attention=(False, True, True, True),
  cross_attention=(False, True, True, True),
  temporal_mixing=("conv",) * 4,
  embed_dim=1024,
)


def recipe(config: ml_collections.ConfigDict, variant: str) -> None:
  if variant != "demo":
    return
  # Minutes on a 2-core CPU: 16x16 crops, a quarter of the cost, of 4-frame
  # runs: a step costs a third of a 16-frame one, so 800 steps train in about
  # the time of 200 and keep the digits
  # (docs/EXPERIMENTS.md#2026-11-30-sr-stages-on-4-frame-runs).
  config.stage.crop = (16, 16)
  config.stage.crop_frames = 4
  config.total_steps = 800
  config.optim.warmup_steps = 20  # 100 would be most of so short a run.


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return common.stage_from_arg(
    "ssr1", arg, PAPER_UNET, dict(temporal="conv", spatial_attention=False), recipe
  )
