r"""The sampling cascade: which stages run, from which checkpoints, how sampled.

Paper Fig. 6 (seven stages), Sec. 2.5 (noise conditioning augmentation at a
fixed SNR when sampling), Sec. 2.6.1-2.6.2 (classifier-free guidance,
oscillating guidance, dynamic thresholding), Sec. 2.7 (256 base / 128 SR steps
undistilled, 8 steps distilled). Sample the bouncing-digits demo after training
its stages (each stage file's docstring; launch/demo.sh does it all):
  python -m imagen_video_jax.sample --config=configs/cascade.py:demo \
    --prompts=prompts.txt --outdir=samples/demo
and the paper cascade from the stages launch/tpu.sh trained into gs://BUCKET:
  python -m imagen_video_jax.sample \
    --config=configs/cascade.py:paper,workdir_root=gs://BUCKET \
    --prompts=prompts.txt --outdir=samples/paper
Options: `demo,ssr2=True` adds the 64x64 SSR stage; `distilled=all` (or `sr`,
the SR stages only) samples the students of `imagen_video_jax.distill` from
{workdir_root}/{stage}_distilled with the 8-step stochastic sampler, the
guidance weights given to them as an input; `oscillating=True` gives the demo
base the oscillating schedule; `workdir_root=DIR` moves every stage's
checkpoint folder. Any key is overridable per stage, for example
`--config.stages.base.steps=128 --config.stages.ssr1.guidance.w=2`.
"""

import math

import ml_collections

from configs import common

# Sampling-time noise augmentation of the SR conditioning, as a logSNR lambda'.
# Paper Sec. 2.5: "a fixed signal-to-noise ratio such as 3 or 5". SNR 3 means
# alpha'^2 = 0.75, sigma'^2 = 0.25: enough noise to hide the previous stage's
# small artefacts (the train/test mismatch augmentation exists for), little
# enough that colours and positions, which the SR stage must keep, survive.
# It lies inside the paper stages' training range [aug_logsnr_min, aug_logsnr_max]
# (the demo samples at 4, inside its SR stages' [2, 20]).
AUG_LOGSNR = math.log(3.0)
# Which stages sample distilled students: none, all, or the SR stages only.
DISTILLED = ("none", "all", "sr")


def guidance(kind: str, **kw: float) -> ml_collections.ConfigDict:
  """Guidance schedule: `constant` (w) or `oscillating` (high, low, warmup)."""
  g = ml_collections.ConfigDict()
  g.kind = kind  # 'constant' | 'oscillating' (paper Sec. 2.6.2).
  g.w = 1.0  # Constant guidance weight w of eq. 5 (0 = conditional model only).
  g.high = 15.0  # Oscillating: high weight (paper: e.g. 15) ...
  g.low = 1.0  # ... alternating with the low weight (paper: e.g. 1) ...
  g.warmup_fraction = 0.1  # ... after this fraction of steps held at `high`.
  g.space = "x"  # Space eq. 5 mixes: "x" | "eps" | "v" (same x~, other rounding).
  # The conditional and unconditional passes in one model call (True), or in
  # two, one after the other: the same output, half the activations at once.
  # A stage with frame_shards > 1 always runs them one after the other.
  g.batched = True
  g.update(kw)
  return g


def stage(
  name: str,
  variant: str,
  *,
  steps: int,
  guide: ml_collections.ConfigDict,
  sampler: str = "ancestral",
  thresholding: str = "dynamic",
  aug_logsnr: float = AUG_LOGSNR,
  distilled: bool = False,
) -> ml_collections.ConfigDict:
  """One stage's checkpoint and sampler settings."""
  s = ml_collections.ConfigDict()
  s.config = f"configs/{name}.py:{variant}"  # The stage's training config spec.
  # A distilled student (distill.py's workdir), which takes w as an input: its
  # checkpoint must be one, and `steps` the count it was distilled for.
  s.distilled = distilled
  # Workdir with checkpoints/ ('' = {workdir_root}/{name}, or
  # {workdir_root}/{name}_distilled for a distilled stage).
  s.workdir = ""
  s.sampler = sampler  # 'ancestral' (eq. 3-4) | 'ddim' | 'distilled' (Meng et al.).
  s.steps = steps  # Sampling steps.
  s.gamma = 0.3  # Ancestral: interpolation of the two variances (eq. 4).
  s.guidance = guide  # Classifier-free guidance schedule (eq. 5).
  s.thresholding = thresholding  # 'none' | 'static' (clip to [-1, 1]) | 'dynamic'.
  s.percentile = 99.5  # Dynamic thresholding percentile p in (0, 100] (Saharia et al.).
  # Fixed logSNR lambda' of the conditioning augmentation (SR stages only).
  s.aug_logsnr = None if name == "base" else aug_logsnr
  # Devices each sample's frames are split over (-1 = all of the host's): for a
  # stage whose one sample does not fit a chip. 1 = data parallel only.
  s.frame_shards = 1
  return s


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  opts = common.parse_arg(
    arg, workdir_root="", ssr2=False, distilled="none", oscillating=False
  )
  v = opts.variant
  if opts.distilled not in DISTILLED:
    raise ValueError(
      f"Unknown option distilled={opts.distilled!r}; expected one of {DISTILLED}."
    )
  c = ml_collections.ConfigDict()
  c.order = common.STAGES  # Stages in cascade order (paper Fig. 6).
  c.workdir_root = "runs/paper"  # Stage s reads {workdir_root}/{s}.
  c.seed = 0  # Sample i of a run uses seed + i.
  c.batch_size = 8  # Samples per call.
  # Paper Sec. 2.7: 256 base / 128 SR steps; distilled stages take 8.
  steps = {n: (256 if n == "base" else 128) for n in common.STAGES}
  student_steps = 8  # The students' (common.py, distill.final_sampling_steps).
  # Paper Sec. 2.6.2: oscillating guidance for the base and the first two SR
  # stages (strong text alignment early, fewer saturation artefacts), constant
  # after; dynamic thresholding keeps the high weights in range.
  oscillating = guidance("oscillating", high=15.0, low=1.0, warmup_fraction=0.1)
  guides = {n: oscillating for n in common.OSCILLATING_STAGES}
  constant = guidance("constant", w=1.0)  # Every stage not in `guides`.
  static_students = False  # Students threshold as their teachers do.
  aug_logsnr = AUG_LOGSNR
  # One sample of the last four stages is 20-430 GB of activations, more than
  # a 16 GB v5e chip: its frames are split over all of the host's chips
  # (README, Memory per chip).
  split_frames = ("ssr2", "tsr2", "tsr3", "ssr3")

  if v == "demo":
    c.order = ("base", "tsr1", "ssr1") + (("ssr2",) if opts.ssr2 else ())
    c.workdir_root = "runs"
    c.batch_size = 32
    # Sized for launch/demo.sh's 30-minute CPU budget: guidance on the base
    # only (w = 0 skips the unconditional half of the SR stages' model calls).
    # w = 2 keeps the motion axis better than w = 1, w = 4 loses colours
    # (docs/EXPERIMENTS.md#2026-11-24-base-learning-rate-3e-3-and-guidance-w-2);
    # 8 SR steps judge as well as 16 at half the cost
    # (docs/EXPERIMENTS.md#2026-11-25-tsr1-without-spatial-attention-8-sr-sampling-steps).
    steps = {"base": 48, "tsr1": 8, "ssr1": 8, "ssr2": 16}
    guides = {"base": guidance("constant", w=2.0)}
    if opts.oscillating:  # Table 1's other row; w = 4 is the students' w_max.
      guides = {"base": guidance("oscillating", high=4.0, low=1.0)}
    constant = guidance("constant", w=0.0)
    static_students = True  # As the demo students' distill.thresholding.
    # The demo's briefly trained SR stages lose colours under the paper's SNR 3
    # and keep them at logSNR 4 (SNR ~55)
    # (docs/EXPERIMENTS.md#2026-11-24-sr-conditioning-sampled-at-logsnr-4).
    aug_logsnr = 4.0
    split_frames = ()

  if v == "runlocal":  # Tiny, for tests.
    c.workdir_root = "runs"
    c.batch_size = 2
    steps = {n: 2 for n in common.STAGES}
    student_steps = 2
    split_frames = ()

  if opts.workdir_root:
    c.workdir_root = opts.workdir_root
  c.stages = ml_collections.ConfigDict()
  for name in c.order:
    distilled = opts.distilled == "all" or (opts.distilled == "sr" and name != "base")
    thresholding = "dynamic" if name in guides else "static"
    if distilled and static_students:
      thresholding = "static"
    c.stages[name] = stage(
      name,
      v,
      steps=student_steps if distilled else steps[name],
      guide=guides.get(name, constant).copy_and_resolve_references(),
      sampler="distilled" if distilled else "ancestral",
      thresholding=thresholding,
      aug_logsnr=aug_logsnr,
      distilled=distilled,
    )
    if name in split_frames:
      c.stages[name].frame_shards = -1
  return c
