"""Defaults shared by every stage config.

A stage is data: `STAGE_SHAPES` holds its output and input shapes,
`stage_config` fills every other key, and each stage file (base.py, tsr1.py,
...) gives only its paper U-Net and its recipe through `stage_from_arg`.
`stage_config` writes every key once, with the paper's value and a one-line
comment; one block per other variant then overrides only what differs (demo and
runlocal share a one-CPU block). `get_config(arg)` in a stage file takes
`paper`, `demo` or `runlocal`, optionally followed by `,key=value` options (for
example `paper,batch=256`); each stage file's docstring gives its launch
commands.
"""

from collections.abc import Callable
from typing import Any

import ml_collections

from imagen_video_jax import sharding

# The stages in cascade order (paper Fig. 6).
STAGES = ("base", "tsr1", "ssr1", "ssr2", "tsr2", "tsr3", "ssr3")


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses `variant,key=value,...` into a ConfigDict (big_vision style).

  The first comma-separated item without `=` is the variant (paper, demo or
  runlocal). Values are cast to the type of the default; an unknown key is an
  error naming it.
  """
  out = ml_collections.ConfigDict(dict(variant="demo", **defaults))
  for item in (arg or "").split(","):
    item = item.strip()
    if not item:
      continue
    if "=" not in item:
      out.variant = item
      continue
    key, value = item.split("=", 1)
    if key not in out:
      raise ValueError(
        f"Unknown config option {key!r} in {arg!r}; known: {sorted(out.keys())}"
      )
    default = out[key]
    if isinstance(default, bool):
      out[key] = value.lower() in ("1", "true", "yes")
    elif default is None:
      out[key] = value
    else:
      try:
        out[key] = type(default)(value)
      except ValueError as e:
        raise ValueError(
          f"Config option {key}={value!r} in {arg!r} must be a"
          f" {type(default).__name__}."
        ) from e
  if out.variant not in ("paper", "demo", "runlocal"):
    raise ValueError(
      f"Unknown config variant {out.variant!r}; expected paper, demo or runlocal."
    )
  return out


# Every stage's output (frames, height, width, fps) and the stage whose output
# it reads, per variant (paper Fig. 6 for "paper"). An input given as (name,
# shape) is that stage's clips at another frame rate: the demo's temporal SR
# stages learn 8 -> 16 frames from ssr1's videos at half its fps.
STAGE_SHAPES = {
  "paper": {
    "base": ((16, 24, 40, 3), None),
    "tsr1": ((32, 24, 40, 6), "base"),
    "ssr1": ((32, 48, 80, 6), "tsr1"),
    "ssr2": ((32, 192, 320, 6), "ssr1"),
    "tsr2": ((64, 192, 320, 12), "ssr2"),
    "tsr3": ((128, 192, 320, 24), "tsr2"),
    "ssr3": ((128, 768, 1280, 24), "tsr3"),
  },
  "demo": {
    "base": ((8, 16, 16, 4), None),
    "tsr1": ((16, 16, 16, 8), "base"),
    "ssr1": ((16, 32, 32, 8), "tsr1"),
    "ssr2": ((16, 64, 64, 8), "ssr1"),
    "tsr2": ((16, 32, 32, 8), ("ssr1", (8, 32, 32, 4))),
    "tsr3": ((16, 32, 32, 8), ("ssr1", (8, 32, 32, 4))),
    "ssr3": ((16, 64, 64, 8), "tsr1"),
  },
  "runlocal": {
    "base": ((2, 8, 8, 1), None),
    "tsr1": ((4, 8, 8, 2), "base"),
    "ssr1": ((4, 16, 16, 2), "tsr1"),
    "ssr2": ((4, 64, 64, 2), "ssr1"),
    "tsr2": ((8, 64, 64, 4), "ssr2"),
    "tsr3": ((16, 64, 64, 8), "tsr2"),
    "ssr3": ((16, 256, 256, 8), "tsr3"),
  },
}


def stage_shapes(
  name: str, variant: str
) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict | None]:
  """A stage's output shape and its input's (None for a base), from STAGE_SHAPES.

  Each is a ConfigDict(name, frames, height, width, fps), as config.stage and
  config.stage.input hold them.
  """
  table = STAGE_SHAPES[variant]
  if name not in table:
    raise ValueError(f"Unknown stage {name!r}; stages: {list(table)}.")

  def shape(stage: str, dims: tuple) -> ml_collections.ConfigDict:
    frames, height, width, fps = dims
    return ml_collections.ConfigDict(
      dict(name=stage, frames=frames, height=height, width=width, fps=float(fps))
    )

  dims, source = table[name]
  if source is None:
    return shape(name, dims), None
  source, source_dims = (
    (source, table[source][0]) if isinstance(source, str) else source
  )
  return shape(name, dims), shape(source, source_dims)


def model_config(**overrides: Any) -> ml_collections.ConfigDict:
  """VideoUNet keyword arguments; per-level lists run from high to low resolution."""
  m = ml_collections.ConfigDict()
  m.base_channels = 64  # Channels of the first level.
  m.channel_mult = (1, 2, 4)  # Channels per level = base_channels * mult.
  # ResBlocks per level (Efficient U-Net: more at low res).
  m.num_res_blocks = (1, 2, 3)
  m.spatial_attention = (False, True, True)  # Spatial self-attention per level.
  m.cross_attention = (False, True, True)  # Text cross-attention per level.
  # 'attention' | 'conv' | 'none' per level.
  m.temporal_mixing = ("conv", "conv", "conv")
  m.head_dim = 64  # Attention head size.
  m.dropout = 0.0  # Dropout in ResBlocks.
  m.out_channels = 3  # Prediction channels (RGB).
  m.cond_channels = 0  # Channels of the SR conditioning video (0 for base).
  m.use_aug_embedding = False  # Embed the noise-augmentation logSNR (SR stages).
  # Width of the conditioning embedding (lambda, lambda', pooled text).
  m.embed_dim = 256
  m.num_extra_scalars = 0  # Extra scalar conditions (distillation adds guidance w).
  # SR stages: predict the v of the residual x - cond (v_hat = out - sigma_t cond),
  # so an untrained net already copies its input; needs parameterization 'v'. Off:
  # the demo's SR stages then also copy the base's flaws
  # (docs/EXPERIMENTS.md#2026-11-30-cond_skip-sr-stages-predicting-a-residual).
  m.cond_skip = False
  m.update(overrides)
  return m


def small_model(
  variant: str, *, temporal: str, spatial_attention: bool = True
) -> ml_collections.ConfigDict:
  """The demo and runlocal U-Nets, shared by every stage.

  Stages differ only in temporal mixing ('attention' for the base, 'conv' for
  SR stages) and in whether the lowest level has spatial self-attention.
  demo: about 1.4M parameters, sized so that the bouncing-digits cascade
  trains on a 2-core CPU in minutes; runlocal: tiny, for tests.
  """
  if variant == "demo":
    return model_config(
      base_channels=16,
      channel_mult=(1, 2, 4),
      num_res_blocks=(1, 1, 2),
      spatial_attention=(False, False, spatial_attention),
      cross_attention=(False, True, True),
      temporal_mixing=(temporal,) * 3,
      head_dim=16,
      embed_dim=128,
    )
  return model_config(
    base_channels=8,
    channel_mult=(1, 2),
    num_res_blocks=(1, 1),
    spatial_attention=(False, spatial_attention),
    cross_attention=(False, True),
    temporal_mixing=(temporal,) * 2,
    head_dim=8,
    embed_dim=32,
  )


def stage_config(
  name: str, model: ml_collections.ConfigDict, variant: str
) -> ml_collections.ConfigDict:
  """Stage `name`'s training config for `variant`.

  Every key once, with the paper's value (a pod's where the paper gives none);
  then one block per other variant overrides what differs, with the reason.
  """
  stage, input_stage = stage_shapes(name, variant)
  c = ml_collections.ConfigDict()
  c.stage = stage
  c.stage.input = input_stage  # Previous stage's output shape (None for base).
  # (h, w) random crop of output and conditioning (tsr1, ssr1 demos; ssr3); a typed
  # placeholder so that `--config.stage.crop='(8, 8)'` can set it.
  c.stage.crop = ml_collections.config_dict.placeholder(tuple)
  # Train on random runs of this many consecutive frames (and the conditioning's
  # matching frames; a multiple of the frame ratio). The SR U-Nets mix frames by
  # convolution only, so they sample the full clip; None trains on whole clips.
  c.stage.crop_frames = ml_collections.config_dict.placeholder(int)
  c.model = model
  if input_stage is not None:
    c.model.cond_channels = 3
    c.model.use_aug_embedding = True

  c.text = ml_collections.ConfigDict()
  c.text.encoder = "byte_t5"  # 'byte_t5' (offline: bytes + seeded frozen T5) | 't5'.
  c.text.t5_size = "xxl"  # T5 v1.1 size.
  c.text.checkpoint = ""  # t5x directory or safetensors file ('' = seeded init).
  c.text.vocab = ""  # Sentencepiece model path (encoder='t5').
  c.text.max_length = 128  # Tokens per caption.
  c.text.seed = 0  # Seed of the frozen encoder when no checkpoint is given.
  c.text.precomputed = False  # Read 'text_emb' from the data instead of encoding.

  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.parameterization = "v"  # 'v' (paper Sec. 2.4) | 'eps' | 'x'.
  c.diffusion.loss = "v_mse"  # One of losses.LOSSES ('eps_mse' is eq. 2).
  # train.py trains on late_loss (one of losses.LOSSES; '' = never) from step
  # late_loss_from on: e.g. a weighting for the coarse layout, then one for detail.
  c.diffusion.late_loss = ""
  c.diffusion.late_loss_from = 0
  c.diffusion.schedule = "cosine"  # Continuous logSNR schedule.
  c.diffusion.logsnr_min = -20.0  # lambda_min of the schedule.
  c.diffusion.logsnr_max = 20.0  # lambda_max of the schedule.
  c.diffusion.t_sampling = "antithetic"  # 'uniform' | 'antithetic' draw of t.
  c.diffusion.text_dropout = 0.1  # Caption dropout for classifier-free guidance.
  # Noise conditioning augmentation range (SR stages; paper Sec. 2.5).
  c.diffusion.aug_logsnr_min = -5.0
  c.diffusion.aug_logsnr_max = 20.0
  # TSR stages: input frames 'repeat'ed (paper Sec. 2.2) or blended 'linear'ly in time.
  c.diffusion.temporal_upsample = "repeat"

  c.data = ml_collections.ConfigDict()
  c.data.data_dir = "~/tensorflow_datasets"  # TFDS data directory.
  c.data.split = "train"  # TFDS split to train on.
  c.data.mixture = ml_collections.ConfigDict(
    {"bouncing_digits/videos": 0.8, "bouncing_digits/images": 0.2}
  )  # Dataset name -> fraction of batches (images: B*T single-frame examples).
  c.data.source_fps = 0.0  # Source frame rate if a dataset has no 'fps' metadata.
  c.data.shuffle = True  # Shuffle examples (deterministic for a seed).
  c.data.worker_count = 0  # grain worker processes (0 = in-process).
  c.data.prefetch = 2  # Batches prefetched per host.

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adamw"
  c.optim.learning_rate = 1e-4  # Peak learning rate.
  c.optim.warmup_steps = 10_000  # Linear warmup.
  c.optim.schedule = "constant"  # After warmup: 'constant' | 'cosine' | 'wsd'.
  c.optim.decay_fraction = 0.2  # 'wsd': linear decay to 0 over this last fraction.
  c.optim.b1 = 0.9
  c.optim.b2 = 0.99
  c.optim.weight_decay = 0.0
  c.optim.grad_clip = 1.0  # Global-norm gradient clipping.

  c.ema_decay = 0.9999  # EMA of parameters.
  # Global batch. The paper stages are sized for a v5p-128 slice (64 chips of
  # 95 GB): one clip per chip fits every stage (README, "Memory per chip").
  c.batch_size = 64
  c.total_steps = 1_000_000
  c.seed = 0
  c.log_every = 100  # Steps between metric writes.
  c.ckpt_every = 2_000  # Steps between checkpoints.
  c.keep_ckpts = 3  # Checkpoints kept.
  c.max_bad_steps = 10  # Consecutive NaN/Inf steps before the run stops.
  c.profile_steps = 0  # Steps to profile after step 10 (0 = off).

  c.distill = distill_config(stage.name, c.optim)

  c.mesh = ml_collections.ConfigDict()
  # (data, fsdp, tensor); one entry may be -1. The paper stages shard their
  # parameters, optimizer state and EMA over all chips (FSDP).
  c.mesh.shape = (1, -1, 1)
  # A parameter dimension the mesh doesn't divide stays whole on every chip and
  # is logged with its size; True makes that an error (sharding.check_undivided).
  c.mesh.error_on_undivided = False
  # Logical axis -> mesh axes: imagen_video_jax/sharding.py's table.
  c.logical_axis_rules = sharding.DEFAULT_RULES
  c.dtype = "bfloat16"  # Compute dtype.
  c.remat = "block"  # 'none' | 'block' | 'full'.
  c.peak_flops = 0.0  # Peak FLOP/s per device for MFU (0 = look up by device kind).

  if variant in ("demo", "runlocal"):  # Both run on one CPU.
    c.text.t5_size = "tiny"
    c.text.max_length = 48
    c.data.data_dir = "data/built"  # Where launch/demo.sh builds bouncing digits.
    c.optim.learning_rate = 2e-3
    c.optim.warmup_steps = 100
    # A ~100-step EMA window lags their short runs less.
    c.ema_decay = 0.99
    c.batch_size = 16
    c.total_steps = 2_000
    c.log_every = 50
    c.ckpt_every = 500
    # A tenth of the demo's training rate: the student starts at a trained net.
    c.distill.optim.learning_rate = 3e-4
    c.distill.optim.warmup_steps = 10
    c.distill.ema_decay = 0.99
    c.mesh.shape = (-1, 1, 1)  # Data parallel over the host's devices.
    c.dtype = "float32"
    c.remat = "none"

  if variant == "demo":
    # The schedule stops at 8: the demo's samplers' last model call is at
    # lambda ~6 (48 base steps) or ~3 (8 SR steps), and the draws above made
    # much of the loss's gradient noise
    # (docs/EXPERIMENTS.md#2026-11-24-schedule-up-to-logsnr-8).
    c.diffusion.logsnr_max = 8.0
    # The briefly trained SR stages keep lambda' >= 2, so that every draw shows
    # them a usable input to copy
    # (docs/EXPERIMENTS.md#2026-11-24-sr-noise-augmentation-from-logsnr-2).
    c.diffusion.aug_logsnr_min = 2.0
    # The demo samples its base at w = 2 (or 4 and 1), its SR stages unguided.
    c.distill.w_max = 4.0 if name == "base" else 0.0
    c.distill.guidance_steps = 300 if name == "base" else 0
    c.distill.start_sampling_steps = 64 if name == "base" else 32
    c.distill.round_steps = 200
    # Static where w is small: dynamic thresholding greys the demo teacher's
    # DDIM samples
    # (docs/EXPERIMENTS.md#2026-12-02-static-clipping-of-the-teachers-ddim-steps-the-demos-grey-students).
    c.distill.thresholding = "static"

  if variant == "runlocal":  # Tiny, for tests: a few updates per phase.
    c.distill.guidance_steps = 4
    c.distill.start_sampling_steps = 8
    c.distill.final_sampling_steps = 2
    c.distill.round_steps = 4
  return c


def stage_from_arg(
  name: str,
  arg: str | None,
  paper_unet: dict[str, Any],
  small_unet: dict[str, Any],
  recipe: Callable[[ml_collections.ConfigDict, str], None] | None = None,
) -> ml_collections.ConfigDict:
  """Stage `name`'s config for `arg` ("variant,key=value,...").

  The paper variant builds `model_config(**paper_unet)`, the others
  `small_model(variant, **small_unet)`; `recipe(config, variant)` then edits the
  stage's config in place, and the `,batch=`/`,steps=` options come last.
  """
  opts = parse_arg(arg, batch=0, steps=0)
  v = opts.variant
  model = model_config(**paper_unet) if v == "paper" else small_model(v, **small_unet)
  config = stage_config(name, model, v)
  if recipe is not None:
    recipe(config, v)
  return apply_options(config, opts)


def apply_options(
  config: ml_collections.ConfigDict, opts: ml_collections.ConfigDict
) -> ml_collections.ConfigDict:
  """Applies the generic `,key=value` options of `parse_arg` to `config`."""
  if opts.get("batch"):
    config.batch_size = opts.batch
  if opts.get("steps"):
    config.total_steps = opts.steps
  return config


# Stages sampled with oscillating guidance up to w = 15 (paper Sec. 2.6.2).
OSCILLATING_STAGES = ("base", "tsr1", "ssr1")


def distill_config(
  name: str, optim: ml_collections.ConfigDict
) -> ml_collections.ConfigDict:
  """Guided progressive distillation of a stage (paper Sec. 2.7; distill.py).

  Phase 1 (guidance distillation, Meng et al., 2022) teaches a student that
  takes w as an input the teacher's guided output for w in [w_min, w_max];
  phase 2 (halving) halves its sampling steps, start_sampling_steps -> ... ->
  final_sampling_steps, one round of `round_steps` updates each (Salimans & Ho,
  2022). The paper gives no step counts for distillation: the paper variant's
  are an estimate, not the paper's. `stage_config` overrides these per variant.
  """
  guided = name in OSCILLATING_STAGES
  d = ml_collections.ConfigDict()
  # As in every stage config, `*_steps` count optimizer updates; the
  # `*_sampling_steps` count sampling steps.
  d.teacher = ""  # Workdir of the trained stage (its EMA params are the teacher).
  # Guidance weights w ~ U[w_min, w_max] of phases 1 and 2; the range must hold
  # every w the cascade samples with (oscillating: its high and low).
  d.w_min = 0.0
  # Oscillating guidance's high weight, or a constant w = 1 with margin.
  d.w_max = 15.0 if guided else 2.0
  # Phase 1 updates (0 skips it: only for w_max = 0, an unguided stage).
  d.guidance_steps = 50_000
  # The teacher's step count, where the halving starts: the undistilled
  # cascade's (Table 1).
  d.start_sampling_steps = 256 if name == "base" else 128
  d.final_sampling_steps = 8  # The final student's.
  d.round_steps = 50_000  # Per halving.
  # Phase 2's loss (Salimans & Ho); phase 1 uses diffusion.loss.
  d.loss = "truncated_snr"
  # How the teacher's x_hat is thresholded in phase 2's DDIM steps (and the
  # student's when sampled): dynamic for high guidance weights, static (clip to
  # [-1, 1]) where w is small.
  d.thresholding = "dynamic" if d.w_max > 4 else "static"  # Or 'none'.
  d.optim = optim.copy_and_resolve_references()  # A fresh optimizer every round.
  d.optim.learning_rate = 1e-4
  d.optim.warmup_steps = 1_000
  d.optim.schedule = "constant"
  d.ema_decay = 0.9999  # EMA of the student.
  return d
