r"""Stage 7, SSR: 128x1280x768 at 24 fps from tsr3's 128x320x192; 340M parameters,
fully convolutional, trained on crops.

Train the paper stage on every worker of a TPU VM pod (launch/tpu.sh's header
gives --create and --setup for a new pod; arguments after `--` override keys):
  bash launch/tpu.sh --tpu=TPU --zone=ZONE --stage=ssr3 \
    --config=configs/ssr3.py:paper --workdir=gs://BUCKET/ssr3
the demo stage on one CPU (`:runlocal` is tiny, for tests):
  python -m imagen_video_jax.train --config=configs/ssr3.py:demo --workdir=runs/ssr3
and distil the trained stage (paper Sec. 2.7):
  python -m imagen_video_jax.distill --config=configs/ssr3.py:demo \
    --config.distill.teacher=runs/ssr3 --workdir=runs/ssr3_distilled
The demo cascade (configs/cascade.py:demo) stops before this stage.
"""

import ml_collections

from configs import common

# Paper Fig. 6 / Sec. 2.2.
PAPER_UNET = dict(
  base_channels=128,
  channel_mult=(1, 2, 4, 4, 4),
  num_res_blocks=(2, 3, 4, 5, 4),
  spatial_attention=(False,) * 5,
  cross_attention=(False,) * 5,
  temporal_mixing=("conv",) * 5,
  embed_dim=1024,
)


def recipe(config: ml_collections.ConfigDict, variant: str) -> None:
  # Fully convolutional, so it trains on crops and samples at full size.
  config.stage.crop = (192, 320)
  if variant != "paper":
    config.stage.crop = (32, 32)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return common.stage_from_arg(
    "ssr3", arg, PAPER_UNET, dict(temporal="conv", spatial_attention=False), recipe
  )
