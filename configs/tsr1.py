r"""Stage 2, TSR: 32x40x24 at 6 fps from the base's 16x40x24 at 3 fps; 1.7B parameters.

Train the paper stage on every worker of a TPU VM pod (launch/tpu.sh's header
gives --create and --setup for a new pod; arguments after `--` override keys):
  bash launch/tpu.sh --tpu=TPU --zone=ZONE --stage=tsr1 \
    --config=configs/tsr1.py:paper --workdir=gs://BUCKET/tsr1
the demo stage on one CPU (`:runlocal` is tiny, for tests):
  python -m imagen_video_jax.train --config=configs/tsr1.py:demo --workdir=runs/tsr1
and distil the trained stage (paper Sec. 2.7):
  python -m imagen_video_jax.distill --config=configs/tsr1.py:demo \
    --config.distill.teacher=runs/tsr1 --workdir=runs/tsr1_distilled
launch/demo.sh trains the demo's base, tsr1 and ssr1, and
launch/distill_demo.sh distils them.
"""

import ml_collections

from configs import common

# Paper Fig. 6 / Sec. 2.2.
PAPER_UNET = dict(
  base_channels=256,
  channel_mult=(1, 2, 4, 4),
  num_res_blocks=(3, 4, 6, 9),
  spatial_attention=(False, True, True, True),
  cross_attention=(False, True, True, True),
  temporal_mixing=("conv",) * 4,
  embed_dim=1024,
)


def recipe(config: ml_collections.ConfigDict, variant: str) -> None:
  if variant != "demo":
    return
  # Minutes on a 2-core CPU (launch/demo.sh). Without spatial attention it
  # trains faster and keeps as many digits
  # (docs/EXPERIMENTS.md#2026-11-25-tsr1-without-spatial-attention-8-sr-sampling-steps).
  config.model.spatial_attention = (False, False, False)
  # Runs of 4 frames (2 input frames): 3x the steps/s of whole clips
  # (docs/EXPERIMENTS.md#2026-11-30-sr-stages-on-4-frame-runs). Of whole 16x16
  # frames, not crops: filling in a frame, or extrapolating the last one, needs
  # the digit's path in view. On 8x8 crops the last frame came out bright and
  # discoloured, and whole frames cost about the same per step
  # (docs/EXPERIMENTS.md#2026-12-06-tsr1s-last-frame-the-8x8-crops).
  config.stage.crop_frames = 4
  # The SNR weight clipped to [1, 5] (v-MSE's is 1 + SNR): the low-noise draws
  # no longer drown the rest, and in the same steps the frames it fills in and
  # the last one gain 11 and 21 points on ground truth
  # (docs/EXPERIMENTS.md#2026-12-07-snr-weighted-losses-for-the-base-and-tsr1).
  config.diffusion.loss = "clipped_snr"
  config.total_steps = 1200
  config.optim.warmup_steps = 20  # 100 would be most of so short a run.
  # It keeps more digits than 2e-3
  # (docs/EXPERIMENTS.md#2026-11-24-tsr1-learning-rate-3e-3).
  config.optim.learning_rate = 3e-3
  # Videos only: single frames teach a temporal SR stage nothing temporal, and
  # on a CPU the second compiled step (image batches) costs most of a minute.
  config.data.mixture = ml_collections.ConfigDict({"bouncing_digits/videos": 1.0})


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return common.stage_from_arg("tsr1", arg, PAPER_UNET, dict(temporal="conv"), recipe)
