r"""Stage 4, SSR: 32x320x192 at 6 fps from ssr1's 32x80x48; 1.2B parameters.

Train the paper stage on every worker of a TPU VM pod (launch/tpu.sh's header
gives --create and --setup for a new pod; arguments after `--` override keys):
  bash launch/tpu.sh --tpu=TPU --zone=ZONE --stage=ssr2 \
    --config=configs/ssr2.py:paper --workdir=gs://BUCKET/ssr2
the demo stage on one CPU (`:runlocal` is tiny, for tests):
  python -m imagen_video_jax.train --config=configs/ssr2.py:demo --workdir=runs/ssr2
and distil the trained stage (paper Sec. 2.7):
  python -m imagen_video_jax.distill --config=configs/ssr2.py:demo \
    --config.distill.teacher=runs/ssr2 --workdir=runs/ssr2_distilled
`configs/cascade.py:demo,ssr2=True` samples the demo's ssr2 after ssr1.
"""

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
