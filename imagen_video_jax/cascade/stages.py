"""Stage selection and the checks that a cascade's stages fit together.

A stage is data: its training config (configs/<stage>.py) says what it outputs
(`config.stage`: frames, height, width, fps) and what it reads
(`config.stage.input`: the previous stage's output, None for the base). These
checks run before any sampling, so that a mismatched cascade fails in a second
with a message naming both stages, not after an hour of base-model sampling.
"""

from collections.abc import Sequence

import ml_collections

from imagen_video_jax import config_utils


def output_shape(config: ml_collections.ConfigDict) -> config_utils.StageShape:
  """The shape a stage generates (its full size, never its crop)."""
  return config_utils.StageShape.of(config.stage)


def input_shape(config: ml_collections.ConfigDict) -> config_utils.StageShape | None:
  """The shape a stage is conditioned on; None for a base stage."""
  return config_utils.StageShape.of(config.stage.input)


def _fmt(shape: config_utils.StageShape | None) -> str:
  return "text only" if shape is None else str(shape)


def select_stages(order: Sequence[str], spec: str) -> tuple[str, ...]:
  """Picks the stages to run from `--stages`.

  Args:
    order: all stages of the cascade, in order.
    spec: '' (all), a comma list of consecutive stages ('base,tsr1'), or an
      inclusive range 'first:last' where either end may be omitted ('tsr1:',
      ':ssr1').

  Returns:
    The selected stage names in cascade order.
  """
  order = tuple(order)
  spec = spec.strip()
  if not spec:
    return order

  def index(name: str) -> int:
    if name not in order:
      raise ValueError(
        f"Unknown stage {name!r} in --stages={spec!r}; cascade: {order}."
      )
    return order.index(name)

  if ":" in spec:
    first, _, last = spec.partition(":")
    lo = index(first.strip()) if first.strip() else 0
    hi = index(last.strip()) if last.strip() else len(order) - 1
    if lo > hi:
      raise ValueError(f"--stages={spec!r}: {order[lo]!r} comes after {order[hi]!r}.")
    return order[lo : hi + 1]
  idx = [index(n.strip()) for n in spec.split(",") if n.strip()]
  if idx != list(range(idx[0], idx[0] + len(idx))):
    raise ValueError(
      f"--stages={spec!r} is not a contiguous run of the cascade {order}."
    )
  return order[idx[0] : idx[-1] + 1]


def check_chain(
  names: Sequence[str],
  configs: Sequence[ml_collections.ConfigDict],
  *,
  from_video: bool = False,
) -> None:
  """Raises ValueError unless each stage reads what the previous one writes.

  Args:
    names: the stage names (as the cascade config calls them), in order.
    configs: their training configs.
    from_video: the first stage reads a user video (`--input_video`) instead of
      a previous stage, so it must be a super-resolution stage.
  """
  if len(names) != len(configs) or not names:
    raise ValueError(f"Need one config per stage; got {len(configs)} for {names}.")
  first_in = input_shape(configs[0])
  if from_video and first_in is None:
    raise ValueError(
      f"Stage {names[0]!r} is a base stage (text only); --input_video needs the "
      "first selected stage to be a super-resolution stage."
    )
  if not from_video and first_in is not None:
    raise ValueError(
      f"Stage {names[0]!r} needs an input video of {_fmt(first_in)} but no earlier "
      "stage is selected; add the previous stage or pass --input_video."
    )
  for prev, prev_cfg, name, cfg in zip(names, configs, names[1:], configs[1:]):
    produced, expected = output_shape(prev_cfg), input_shape(cfg)
    if expected is None or produced.size != expected.size:
      raise ValueError(
        f"Stages do not chain: {prev!r} outputs {_fmt(produced)} (frames x height "
        f"x width) but {name!r} expects input {_fmt(expected)}."
      )
  for name, cfg in zip(names, configs):
    shape_in, shape_out = input_shape(cfg), output_shape(cfg)
    if shape_in is not None and shape_out.frames % shape_in.frames:
      raise ValueError(
        f"Stage {name!r}: its {shape_out.frames} frames are not a multiple of its "
        f"input's {shape_in.frames} frames (temporal SR repeats frames)."
      )


def check_augmentation(
  names: Sequence[str],
  configs: Sequence[ml_collections.ConfigDict],
  aug_logsnrs: Sequence[float | None],
) -> None:
  """Raises ValueError unless each SR stage samples at a lambda' it trained on.

  A super-resolution stage is conditioned at sampling on its input noised to the
  fixed logSNR `aug_logsnr` (paper Sec. 2.5); it only learnt lambda' drawn from
  its config's [diffusion.aug_logsnr_min, diffusion.aug_logsnr_max].

  Args:
    names: the stage names, in order.
    configs: their training configs.
    aug_logsnrs: each stage's sampling lambda' (None for a base stage).
  """
  for name, cfg, aug in zip(names, configs, aug_logsnrs, strict=True):
    if input_shape(cfg) is None:
      continue
    if aug is None:
      raise ValueError(f"SR stage {name!r} needs settings.aug_logsnr.")
    lo, hi = cfg.diffusion.aug_logsnr_min, cfg.diffusion.aug_logsnr_max
    if not lo <= aug <= hi:
      raise ValueError(
        f"Stage {name!r}: sampling aug_logsnr={aug:g} lies outside the range it "
        f"was trained on, [{lo:g}, {hi:g}] (diffusion.aug_logsnr_min/max)."
      )


def check_text(
  names: Sequence[str], configs: Sequence[ml_collections.ConfigDict]
) -> ml_collections.ConfigDict:
  """Returns the text config all stages share; ValueError if they differ.

  The prompts are encoded once for the whole cascade, so every stage must have
  been trained with the same encoder (`precomputed` only concerns training
  data and is ignored).
  """

  def key(cfg: ml_collections.ConfigDict) -> dict:
    d = cfg.text.to_dict()
    d.pop("precomputed", None)
    return d

  ref = key(configs[0])
  for name, cfg in zip(names[1:], configs[1:]):
    if key(cfg) != ref:
      raise ValueError(
        f"Stage {name!r} uses text config {key(cfg)} but {names[0]!r} uses {ref}; "
        "all stages of a cascade must share one text encoder."
      )
  return configs[0].text


def check_student(
  name: str,
  config: ml_collections.ConfigDict,
  settings: ml_collections.ConfigDict,
  sampling_steps: int | None,
  workdir: str,
) -> None:
  """Checks a stage's sampler settings against what its checkpoint holds.

  Args:
    name: the stage.
    config: its config as trained (model.num_extra_scalars > 0 for a student
      of distill.py, whose `distill` block gives its w range).
    settings: its cascade settings (distilled, steps, guidance).
    sampling_steps: the student checkpoint's step count (None: any count, a
      student of guidance distillation only).
    workdir: named in the errors.

  Raises:
    ValueError: naming the stage if it is marked distilled but holds a
      trained stage, or samples a student with another step count or a
      guidance weight outside its distilled range.
  """
  student = config.model.num_extra_scalars > 0
  if settings.distilled and not student:
    raise ValueError(
      f"Stage {name!r} is marked distilled, but {workdir!r} holds an undistilled "
      "model: distil it (python -m imagen_video_jax.distill) or sample it with "
      f"stages.{name}.distilled=False."
    )
  if not student:
    return
  if sampling_steps is not None and settings.steps != sampling_steps:
    raise ValueError(
      f"Stage {name!r}: the student in {workdir!r} was distilled for "
      f"{sampling_steps} sampling steps, not stages.{name}.steps={settings.steps}."
    )
  g, d = settings.guidance, config.distill
  weights = (g.w,) if g.kind == "constant" else (g.high, g.low)
  for w in weights:
    if not d.w_min <= w <= d.w_max:
      raise ValueError(
        f"Stage {name!r}: guidance weight {w} lies outside [{d.w_min}, "
        f"{d.w_max}], the range the student in {workdir!r} was distilled for."
      )
