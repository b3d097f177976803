"""Stage 4, SSR: 32x320x192 at 6 fps from ssr1's 32x80x48; 1.2B parameters.

Paper Fig. 6 / Sec. 2.2. Launch on a TPU pod:
  bash launch/tpu.sh --stage=ssr2 --config=configs/ssr2.py:paper --workdir=gs://BUCKET/ssr2
Locally (bouncing digits):
  python -m imagen_video_jax.train --config=configs/ssr2.py:demo --workdir=runs/ssr2
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  opts = common.parse_arg(arg, batch=0, steps=0)
  v = opts.variant
  if v == "paper":
    model = common.model_config(
      base_channels=128,
      channel_mult=(1, 2, 4, 8, 8),
      num_res_blocks=(2, 3, 4, 5, 4),
      spatial_attention=(False, False, True, True, True),
      cross_attention=(False, False, True, True, True),
      temporal_mixing=("conv",) * 5,
      embed_dim=1024,
    )
  else:
    model = common.small_model(v, temporal="conv")
  config = common.stage_config("ssr2", model, v)
  return common.apply_options(config, opts)
