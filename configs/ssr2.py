"""Stage 4, SSR: 32x320x192 at 6 fps from ssr1's 32x80x48; 1.2B parameters."""

import ml_collections

from configs import common

# Paper Fig. 6 / Sec. 2.2.
PAPER_UNET = dict(
  base_channels=128,
  channel_mult=(1, 2, 4, 8, 8),
  num_res_blocks=(2, 3, 4, 5, 4),
  spatial_attention=(False, False, True, True, True),
  cross_attention=(False, False, True, True, True),
  temporal_mixing=("conv",) * 5,
  embed_dim=1024,
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return common.stage_from_arg("ssr2", arg, PAPER_UNET, dict(temporal="conv"))
