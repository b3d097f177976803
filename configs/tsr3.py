r"""Stage 6, TSR: 128x320x192 at 24 fps from tsr2's 64x320x192; 630M parameters.

Train the paper stage on every worker of a TPU VM pod (launch/tpu.sh's header
gives --create and --setup for a new pod; arguments after `--` override keys):
  bash launch/tpu.sh --tpu=TPU --zone=ZONE --stage=tsr3 \
    --config=configs/tsr3.py:paper --workdir=gs://BUCKET/tsr3
the demo stage on one CPU (`:runlocal` is tiny, for tests):
  python -m imagen_video_jax.train --config=configs/tsr3.py:demo --workdir=runs/tsr3
and distil the trained stage (paper Sec. 2.7):
  python -m imagen_video_jax.distill --config=configs/tsr3.py:demo \
    --config.distill.teacher=runs/tsr3 --workdir=runs/tsr3_distilled
The demo cascade (configs/cascade.py:demo) stops before this stage.
"""

import ml_collections

from configs import common

# Paper Fig. 6 / Sec. 2.2.
PAPER_UNET = dict(
  base_channels=128,
  channel_mult=(1, 2, 4, 6, 6),
  num_res_blocks=(2, 3, 3, 4, 3),
  spatial_attention=(False,) * 5,
  cross_attention=(False, False, True, True, True),
  temporal_mixing=("conv",) * 5,
  embed_dim=1024,
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return common.stage_from_arg(
    "tsr3", arg, PAPER_UNET, dict(temporal="conv", spatial_attention=False)
  )
