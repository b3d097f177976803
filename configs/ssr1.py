"""Stage 3, SSR: 32x80x48 at 6 fps from tsr1's 32x40x24; 1.4B parameters.

Paper Fig. 6 / Sec. 2.2. Launch on a TPU pod:
  bash launch/tpu.sh --stage=ssr1 --config=configs/ssr1.py:paper --workdir=gs://BUCKET/ssr1
Locally (bouncing digits):
  python -m imagen_video_jax.train --config=configs/ssr1.py:demo --workdir=runs/ssr1
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  opts = common.parse_arg(arg, batch=0, steps=0)
  v = opts.variant
  stage = {
    "paper": common.shape("ssr1", 32, 48, 80, 6),
    "demo": common.shape("ssr1", 16, 32, 32, 8),
    "runlocal": common.shape("ssr1", 4, 16, 16, 2),
  }[v]
  input_stage = {
    "paper": common.shape("tsr1", 32, 24, 40, 6),
    "demo": common.shape("tsr1", 16, 16, 16, 8),
    "runlocal": common.shape("tsr1", 4, 8, 8, 2),
  }[v]
  model = {
    "paper": common.model_config(
      base_channels=256,
      channel_mult=(1, 2, 4, 4),
      num_res_blocks=(2, 4, 4, 7),
      spatial_attention=(False, True, True, True),
      cross_attention=(False, True, True, True),
      temporal_mixing=("conv",) * 4,
      embed_dim=1024,
    ),
    "demo": common.model_config(
      base_channels=16,
      channel_mult=(1, 2, 4),
      num_res_blocks=(1, 1, 2),
      spatial_attention=(False, False, True),
      cross_attention=(False, True, True),
      temporal_mixing=("conv",) * 3,
      head_dim=16,
      embed_dim=128,
    ),
    "runlocal": common.model_config(
      base_channels=8,
      channel_mult=(1, 2),
      num_res_blocks=(1, 1),
      spatial_attention=(False, True),
      cross_attention=(False, True),
      temporal_mixing=("conv",) * 2,
      head_dim=8,
      embed_dim=32,
    ),
  }[v]
  config = common.stage_config(stage, input_stage, model, v)
  return common.apply_options(config, opts)
