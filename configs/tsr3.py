"""Stage 6, TSR: 128x320x192 at 24 fps from tsr2's 64x320x192; 630M parameters.

Paper Fig. 6 / Sec. 2.2. Launch on a TPU pod:
  bash launch/tpu.sh --stage=tsr3 --config=configs/tsr3.py:paper --workdir=gs://BUCKET/tsr3
Locally (bouncing digits):
  python -m imagen_video_jax.train --config=configs/tsr3.py:demo --workdir=runs/tsr3
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  opts = common.parse_arg(arg, batch=0, steps=0)
  v = opts.variant
  if v == "paper":
    model = common.model_config(
      base_channels=128,
      channel_mult=(1, 2, 4, 6, 6),
      num_res_blocks=(2, 3, 3, 4, 3),
      spatial_attention=(False,) * 5,
      cross_attention=(False, False, True, True, True),
      temporal_mixing=("conv",) * 5,
      embed_dim=1024,
    )
  else:
    model = common.small_model(v, temporal="conv", spatial_attention=False)
  config = common.stage_config("tsr3", model, v)
  return common.apply_options(config, opts)
