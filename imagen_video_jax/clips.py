"""A source clip -> a stage's training example (paper Sec. 2.6, Fig. 6).

Frame skipping to the stage's fps, resizing to its size, for SR stages the
conditioning clip at the input stage's frames and size, and the random crop in
space and time that crop-trained stages learn on. Pure NumPy, so it runs in
the input pipeline's workers.
"""

import dataclasses

import numpy as np

from imagen_video_jax import config_utils, video_io


def frame_step(from_fps: float, to_fps: float, what: str) -> int:
  """Frames skipped to go from `from_fps` to `to_fps` (an integer >= 1)."""
  step = from_fps / to_fps
  if step < 1 or abs(step - round(step)) > 1e-6:
    raise ValueError(
      f"{what}: frame rate {from_fps} / {to_fps} fps = {step} is not an "
      "integer >= 1, so frame skipping cannot reach it."
    )
  return round(step)


@dataclasses.dataclass(frozen=True)
class Cut:
  """Where an example's clip lies in its source (see `StageTransform.cut`)."""

  frames: np.ndarray | None  # Source frame indices [T], None for an image.
  y: int = 0  # Crop offset at the stage's resolution.
  x: int = 0


@dataclasses.dataclass(frozen=True)
class StageTransform:
  """Turns a source clip into the stage's `video` (+ `cond_video`) example."""

  stage: config_utils.StageShape  # With the crop and crop_frames it trains on.
  cond: config_utils.StageShape | None
  source: config_utils.StageShape

  def __post_init__(self):
    s, src = self.stage, self.source
    if s.height > src.height or s.width > src.width:
      raise ValueError(
        f"Stage resolution {s.height}x{s.width} is larger than the source's "
        f"{src.height}x{src.width}."
      )
    if self.cond is not None:
      c = self.cond
      if c.height > s.height or c.width > s.width:
        raise ValueError(f"Stage input {c.height}x{c.width} exceeds the stage's.")
      if c.frames * frame_step(s.fps, c.fps, "stage.input") != s.frames:
        raise ValueError(
          f"Stage input {c.frames} frames at {c.fps} fps does not span the "
          f"stage's {s.frames} frames at {s.fps} fps."
        )
    if src.frames:  # A video source: the clip must fit in it.
      step = frame_step(src.fps, s.fps, "stage.fps")
      if (s.frames - 1) * step + 1 > src.frames:
        raise ValueError(
          f"Stage needs {s.frames} frames at {s.fps} fps = "
          f"{(s.frames - 1) * step + 1} source frames at {src.fps} fps; the "
          f"source has {src.frames}."
        )
    if s.crop_frames is not None:
      r = self.frame_ratio
      if not 0 < s.crop_frames <= s.frames or s.crop_frames % r:
        raise ValueError(
          f"stage.crop_frames={s.crop_frames} must lie in [1, {s.frames}] and be "
          f"a multiple of the stage's frame ratio {r} (stage.frames / "
          "stage.input.frames)."
        )
    if s.crop is not None:
      ch, cw = s.crop
      if not (0 < ch <= s.height and 0 < cw <= s.width):
        raise ValueError(f"Crop {s.crop} does not fit in {s.height}x{s.width}.")
      if self.cond is not None:
        sy, sx = self.crop_scale
        if (
          sy * self.cond.height != s.height
          or sx * self.cond.width != s.width
          or ch % sy
          or cw % sx
        ):
          raise ValueError(
            f"Crop {s.crop} of a {s.height}x{s.width} stage with input "
            f"{self.cond.height}x{self.cond.width} needs integer scale factors "
            "dividing the crop."
          )

  @property
  def frame_ratio(self) -> int:
    """r = T / T': stage frames per conditioning frame (1 without conditioning)."""
    return self.stage.frames // self.cond.frames if self.cond is not None else 1

  @property
  def crop_scale(self) -> tuple[int, int]:
    """(H / H', W / W'): stage pixels per conditioning pixel ((1, 1) without one)."""
    s, c = self.stage, self.cond
    return (s.height // c.height, s.width // c.width) if c is not None else (1, 1)

  def frame_indices(self, rng: np.random.Generator) -> np.ndarray:
    """Source frames of a clip at the stage's fps, from a random start: [T]."""
    step = frame_step(self.source.fps, self.stage.fps, "stage.fps")
    span = (self.stage.frames - 1) * step + 1  # Source frames the clip covers.
    start = rng.integers(0, self.source.frames - span + 1)
    return start + step * np.arange(self.stage.frames)

  def cut(self, rng: np.random.Generator, video: bool = True) -> Cut:
    """Draws where an example's clip lies: its frames, then the crop, then the run.

    Drawn before decoding, so that only the frames the example uses are decoded
    (a 4-frame run of a 16-frame clip decodes 4). An image is not cut in time.
    """
    s, r = self.stage, self.frame_ratio
    indices = self.frame_indices(rng) if video else None
    y = x = 0
    if s.crop is not None:
      (ch, cw), (sy, sx) = s.crop, self.crop_scale
      # Offsets on the input's grid so that both crops cover the same region.
      y = int(sy * rng.integers(0, (s.height - ch) // sy + 1))
      x = int(sx * rng.integers(0, (s.width - cw) // sx + 1))
    if s.crop_frames is not None and video:
      # A run of consecutive frames starting on an input frame, so that its
      # frames [::r] are the conditioning's.
      f = r * rng.integers(0, (s.frames - s.crop_frames) // r + 1)
      indices = indices[f : f + s.crop_frames]
    return Cut(indices, y, x)

  def __call__(self, frames: np.ndarray, cut: Cut) -> dict:
    """The source frames `cut.frames`, uint8 [T,h,w,3] -> the stage's uint8 example.

    Returns {'video': [T,H,W,3]} (H, W = crop when cropping; T = crop_frames
    when cutting in time) plus, for SR stages, {'cond_video': [T',H',W',3]}:
    frames [::T/T'] at the input's resolution, cropped to the same region. An
    image [1,h,w,3] has no frame rate: it gives [1,H,W,3] and [1,H',W',3].
    """
    s, c, r = self.stage, self.cond, self.frame_ratio
    video = video_io.resize(frames, s.height, s.width)
    if c is not None:
      cond = video_io.resize(frames[::r], c.height, c.width)  # Frame skipping to c.fps.
    if s.crop is not None:
      (ch, cw), (sy, sx), y, x = s.crop, self.crop_scale, cut.y, cut.x
      video = video[:, y : y + ch, x : x + cw]
      if c is not None:
        cond = cond[:, y // sy : (y + ch) // sy, x // sx : (x + cw) // sx]
    return {"video": video} if c is None else {"video": video, "cond_video": cond}
