"""Stage 6, TSR: 128x320x192 at 24 fps from tsr2's 64x320x192; 630M parameters."""

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
