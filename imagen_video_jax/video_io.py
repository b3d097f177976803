"""Writing and reading videos: mp4 (H.264), gif, contact-sheet png, npy.

Every writer goes through `files.atomic_path`: the file is written under a temporary
name in the destination folder and renamed, so an interrupted run never leaves
a truncated video under its final name. mp4 encoding and decoding use the
ffmpeg binary shipped inside the `imageio-ffmpeg` wheel (no system ffmpeg).
"""

import math
import os
import subprocess

import imageio_ffmpeg
import numpy as np
from PIL import Image

from imagen_video_jax import files


def to_uint8(video: np.ndarray) -> np.ndarray:
  """Maps [-1, 1] floats to uint8 [0, 255] (clipping outside the range)."""
  video = np.asarray(video, np.float32)
  return np.clip(np.round((video + 1.0) * 127.5), 0, 255).astype(np.uint8)


def resize(frames: np.ndarray, height: int, width: int) -> np.ndarray:
  """Antialiased bilinear resize, frame by frame: uint8 [T,h,w,3] -> [T,H,W,3]."""
  if frames.shape[1:3] == (height, width):
    return frames
  # PIL scales the bilinear kernel's support with the down-sampling factor,
  # i.e. it low-pass filters (antialiases) before sampling.
  return np.stack(
    [
      np.asarray(Image.fromarray(f).resize((width, height), Image.BILINEAR))
      for f in frames
    ]
  )


def _check_video(video: np.ndarray) -> np.ndarray:
  video = np.asarray(video)
  if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
    raise ValueError(
      f"Expected a uint8 video [T, H, W, 3]; got {video.dtype} {video.shape}."
    )
  return video


def write_mp4(path: str, video: np.ndarray, fps: float) -> None:
  """Writes uint8 [T, H, W, 3] as H.264 (yuv420p, odd sizes padded to even)."""
  video = _check_video(video)
  t, h, w, _ = video.shape
  with files.atomic_path(path) as tmp:
    cmd = [
      imageio_ffmpeg.get_ffmpeg_exe(),
      "-y", "-loglevel", "error",
      "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", f"{fps}",
      "-i", "-",
      "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2",
      "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "17",
      "-movflags", "+faststart",
      tmp,
    ]  # fmt: skip
    proc = subprocess.run(cmd, input=video.tobytes(), capture_output=True)
    if proc.returncode:
      raise RuntimeError(f"ffmpeg failed writing {path}: {proc.stderr.decode()}")


def read_video(path: str) -> tuple[np.ndarray, float]:
  """Decodes any video ffmpeg reads -> (uint8 [T, H, W, 3], fps)."""
  if not os.path.isfile(path):
    raise ValueError(f"Video file {path!r} does not exist.")
  try:
    frames = imageio_ffmpeg.read_frames(path)
    meta = next(frames)
    w, h = meta["size"]
    video = [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in frames]
  except (RuntimeError, OSError, StopIteration) as e:
    raise ValueError(f"Cannot decode video {path!r}: {e}") from e
  if not video:
    raise ValueError(f"Video {path!r} has no frames.")
  return np.stack(video), float(meta["fps"])


def write_gif(path: str, video: np.ndarray, fps: float) -> None:
  """Writes uint8 [T, H, W, 3] as a looping gif at `fps`."""
  video = _check_video(video)
  frames = [Image.fromarray(f) for f in video]
  with files.atomic_path(path) as tmp:
    frames[0].save(
      tmp,
      format="GIF",
      save_all=True,
      append_images=frames[1:],
      duration=round(1000 / fps),
      loop=0,
    )


def contact_sheet(video: np.ndarray, columns: int = 8, pad: int = 2) -> np.ndarray:
  """Tiles the frames of uint8 [T, H, W, 3] on a white grid -> uint8 [H', W', 3]."""
  video = _check_video(video)
  t, h, w, _ = video.shape
  cols = min(columns, t)
  rows = math.ceil(t / cols)
  sheet = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
  for i, frame in enumerate(video):
    r, c = divmod(i, cols)
    y, x = pad + r * (h + pad), pad + c * (w + pad)
    sheet[y : y + h, x : x + w] = frame
  return sheet


def write_png(path: str, image: np.ndarray) -> None:
  """Writes uint8 [H, W, 3] as png."""
  with files.atomic_path(path) as tmp:
    Image.fromarray(np.asarray(image, np.uint8)).save(tmp, format="PNG")


def write_npy(path: str, video: np.ndarray) -> None:
  """Writes uint8 [T, H, W, 3] losslessly as npy."""
  video = _check_video(video)
  with files.atomic_path(path) as tmp:
    np.save(tmp, video)


def write_sample(
  outdir: str, index: int, video: np.ndarray, fps: float, *, save_npy: bool
) -> dict[str, str]:
  """Writes NNNN.{mp4,gif,png[,npy]} for one uint8 [T, H, W, 3] sample.

  Returns:
    The written files relative to `outdir`, keyed by kind (mp4, gif, png, npy).
  """
  files = {"mp4": f"{index:04d}.mp4", "gif": f"{index:04d}.gif"}
  files["png"] = f"{index:04d}.png"
  if save_npy:
    files["npy"] = f"{index:04d}.npy"
  write_mp4(os.path.join(outdir, files["mp4"]), video, fps)
  write_gif(os.path.join(outdir, files["gif"]), video, fps)
  write_png(os.path.join(outdir, files["png"]), contact_sheet(video))
  if save_npy:
    write_npy(os.path.join(outdir, files["npy"]), video)
  return files
