"""Stage 7, SSR: 128x1280x768 at 24 fps from tsr3's 128x320x192; 340M parameters,
fully convolutional, trained on crops.

Paper Fig. 6 / Sec. 2.2. Launch on a TPU pod:
  bash launch/tpu.sh --stage=ssr3 --config=configs/ssr3.py:paper --workdir=gs://BUCKET/ssr3
Locally (bouncing digits):
  python -m imagen_video_jax.train --config=configs/ssr3.py:demo --workdir=runs/ssr3
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  opts = common.parse_arg(arg, batch=0, steps=0)
  v = opts.variant
  if v == "paper":
    model = common.model_config(
      base_channels=128,
      channel_mult=(1, 2, 4, 4, 4),
      num_res_blocks=(2, 3, 4, 5, 4),
      spatial_attention=(False,) * 5,
      cross_attention=(False,) * 5,
      temporal_mixing=("conv",) * 5,
      embed_dim=1024,
    )
  else:
    model = common.small_model(v, temporal="conv", spatial_attention=False)
  config = common.stage_config("ssr3", model, v)
  # Fully convolutional, so it trains on crops and samples at full size.
  config.stage.crop = {"paper": (192, 320), "demo": (32, 32), "runlocal": (32, 32)}[v]
  return common.apply_options(config, opts)
