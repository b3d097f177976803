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
  if v == "paper":
    model = common.model_config(
      base_channels=256,
      channel_mult=(1, 2, 4, 4),
      num_res_blocks=(2, 4, 4, 7),
      spatial_attention=(False, True, True, True),
      cross_attention=(False, True, True, True),
      temporal_mixing=("conv",) * 4,
      embed_dim=1024,
    )
  else:
    model = common.small_model(v, temporal="conv", spatial_attention=False)
  config = common.stage_config("ssr1", model, v)
  if v == "demo":  # Minutes on a 2-core CPU: 16x16 crops, a quarter of the cost,
    # of 4-frame runs: a step costs a third of a 16-frame one, so 800 steps train
    # in about the time of 200 and keep the digits
    # (docs/EXPERIMENTS.md#2026-11-30-sr-stages-on-4-frame-runs).
    config.stage.crop = (16, 16)
    config.stage.crop_frames = 4
    config.total_steps = 800
    config.optim.warmup_steps = 20  # 100 would be most of so short a run.
  return common.apply_options(config, opts)
