"""What sample.py feeds the cascade: the prompts, a user's input video, the batch.

The cascade itself (the stages and their chaining) is `cascade/pipeline.py`.
"""

import logging
import os
from typing import Any

import jax
import jax.numpy as jnp

from imagen_video_jax import video_io


def read_prompts(path: str) -> list[str]:
  """One prompt per line (UTF-8); blank lines and `#` comments are skipped.

  Raises:
    ValueError: if the file is missing or a directory, a line is not UTF-8
      (naming the line), or no prompt remains.
  """
  if os.path.isdir(path):
    raise ValueError(f"Prompt file {path!r} is a directory, not a file of prompts.")
  if not os.path.isfile(path):
    raise ValueError(f"Prompt file {path!r} does not exist.")
  prompts = []
  with open(path, "rb") as f:
    for lineno, raw in enumerate(f, start=1):
      try:
        line = raw.decode("utf-8").strip()
      except UnicodeDecodeError as e:
        raise ValueError(f"{path}:{lineno}: line is not valid UTF-8 ({e}).") from e
      if line and not line.startswith("#"):
        prompts.append(line)
  if not prompts:
    raise ValueError(f"Prompt file {path!r} holds no prompt.")
  return prompts


def warn_truncated(prompts: list[str], tokenizer: Any) -> int:
  """Logs a warning for each prompt the tokenizer will truncate.

  Args:
    prompts: the prompts.
    tokenizer: the stages' tokenizer (`num_tokens`, `max_length`).

  Returns:
    The number of prompts that will be truncated.
  """
  truncated = 0
  for prompt in prompts:
    n = tokenizer.num_tokens(prompt)
    if n > tokenizer.max_length:
      truncated += 1
      logging.warning(
        "Prompt of %d tokens truncated to %d: %r", n, tokenizer.max_length, prompt
      )
  return truncated


def load_input_video(path: str, frames: int, height: int, width: int) -> jax.Array:
  """A user's video file as a first SR stage's input (paper Sec. 4: SR as a
  general video super-resolver).

  Only the frames the stage takes are decoded, already resized (see
  `video_io.read_frames`), so a long or large video costs no more memory than
  the stage's input.

  Args:
    path: the video file (anything ffmpeg reads).
    frames, height, width: the stage's input shape; the video needs at least
      `frames` frames.

  Returns:
    float32 [frames, height, width, 3] in [-1, 1]: `frames` evenly spaced
    frames (frame i is stored frame (i * T) // frames of T), resized bilinearly
    (antialiased) to height x width.

  Raises:
    ValueError: if the file is missing, cannot be decoded (naming ffmpeg's
      reason) or has fewer than `frames` frames.
  """
  video = video_io.read_frames(path, frames, height, width)
  return jnp.asarray(video, jnp.float32) / 127.5 - 1.0


def padded_batch(batch_size: int, num_devices: int) -> int:
  """batch_size rounded up to a multiple of the device count."""
  return -(-batch_size // num_devices) * num_devices
