"""What sample.py feeds the cascade: the prompts, a user's input video, the batch.

The cascade itself (the stages and their chaining) is `cascade/pipeline.py`.
"""

import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


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


def load_input_video(
  video: np.ndarray, frames: int, height: int, width: int
) -> jax.Array:
  """A user video as a first SR stage's input (paper Sec. 4: SR as a general
  video super-resolver).

  Args:
    video: uint8 [T0, H0, W0, 3] decoded frames.
    frames, height, width: the stage's input shape; T0 >= frames.

  Returns:
    float32 [frames, height, width, 3] in [-1, 1]: `frames` evenly spaced
    frames, resized bilinearly (antialiased) to height x width.
  """
  if video.shape[0] < frames:
    raise ValueError(f"Input video has {video.shape[0]} frames; need {frames}.")
  idx = (np.arange(frames) * video.shape[0]) // frames
  x = jnp.asarray(video[idx], jnp.float32) / 127.5 - 1.0
  return jax.image.resize(x, (frames, height, width, 3), "bilinear", antialias=True)


def padded_batch(batch_size: int, num_devices: int) -> int:
  """batch_size rounded up to a multiple of the device count."""
  return -(-batch_size // num_devices) * num_devices
