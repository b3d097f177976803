"""Writing and reading videos: mp4 (H.264), gif, contact-sheet png, npy.

Every writer goes through `files.atomic_path`: the file is written under a temporary
name in the destination folder and renamed, so an interrupted run never leaves
a truncated video under its final name. mp4 encoding and decoding use the
ffmpeg binary shipped inside the `imageio-ffmpeg` wheel (no system ffmpeg).
"""

import dataclasses
import math
import os
import re
import subprocess
import tempfile

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


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  """What `probe_video` reads from a file's first video stream."""

  frames: int  # Stored frames (packets); one decoded frame each.
  height: int
  width: int
  fps: float  # 0.0 where the file does not say.


# ffmpeg's log lines under `-loglevel level+...`: "[ctx @ 0x..] [error] text".
_LOG_LINE = re.compile(r"^(?:\[[^\]]*\] )?\[(error|fatal|panic)\] (.*)$")
_SIZE = re.compile(r", (\d+)x(\d+)[ ,]")
_FPS = re.compile(r", ([\d.]+) (?:fps|tbr)\b")


def _command(path: str, args: list[str], loglevel: str) -> list[str]:
  """ffmpeg on input `path`'s first video stream, without its build banner."""
  if not os.path.isfile(path):
    raise ValueError(f"Video file {path!r} does not exist.")
  return [
    imageio_ffmpeg.get_ffmpeg_exe(),
    "-hide_banner", "-nostdin", "-loglevel", f"level+{loglevel}",
    "-i", path, "-map", "0:v:0", *args,
  ]  # fmt: skip


def _check(path: str, returncode: int, stderr: str) -> None:
  """Raises ValueError naming `path` and ffmpeg's own reason in one short line
  (the banner hidden, the reason is not lost behind it)."""
  if returncode:
    cause = _error_lines(stderr) or f"ffmpeg exited with status {returncode}"
    raise ValueError(f"Cannot decode video {path!r}: {cause}.")


def _ffmpeg(path: str, args: list[str], loglevel: str) -> tuple[bytes, str]:
  """Runs ffmpeg on `path` -> (stdout, stderr); see _check for its errors."""
  proc = subprocess.run(_command(path, args, loglevel), capture_output=True)
  stderr = proc.stderr.decode(errors="replace")
  _check(path, proc.returncode, stderr)
  return proc.stdout, stderr


def _ffmpeg_into(path: str, args: list[str], out: np.ndarray) -> int:
  """Runs ffmpeg on `path`, its stdout read straight into `out` (no copy, so
  memory is `out`'s) -> the number of bytes it wrote; see _check."""
  view = memoryview(out).cast("B")
  with tempfile.TemporaryFile() as err:  # A file: no pipe for it to fill.
    cmd = _command(path, args, "error")
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err) as proc:
      n = 0
      while n < len(view) and (k := proc.stdout.readinto(view[n:])):
        n += k
      n += len(proc.stdout.read())  # Nothing, unless more than `out` holds.
    err.seek(0)
    _check(path, proc.returncode, err.read().decode(errors="replace"))
  return n


def _error_lines(log: str) -> str:
  """ffmpeg's error lines, each reason once: "moov atom not found; ..."."""
  causes = []
  for line in log.splitlines():
    match = _LOG_LINE.match(line.strip())
    if not match or match[2].startswith("Error opening input file"):
      continue  # Not an error, or one that only repeats the file's name.
    reason = match[2].rstrip(".").rpartition(": ")[2]
    if not any(reason in c for c in causes):
      causes.append(match[2].rstrip(".")[:200])
  return "; ".join(causes[:3])


def probe_video(path: str) -> VideoInfo:
  """Reads the first video stream's frame count, size and fps.

  Counts the stream's packets (`-c copy`: nothing is decoded), so it is quick
  and needs no memory whatever the length.

  Raises:
    ValueError: if the file is missing or ffmpeg cannot read it (naming the
      file and the cause).
  """
  progress, log = _ffmpeg(
    path, ["-c", "copy", "-f", "null", "-progress", "pipe:1", "-nostats", "-"], "info"
  )
  counts = re.findall(rb"^frame=(\d+)$", progress, re.MULTILINE)
  stream = re.search(r"Stream #0:\d+\S*: Video: (.*)", log)
  size = stream and _SIZE.search(stream[1])
  if not counts or not size:
    raise ValueError(f"Cannot decode video {path!r}: no video stream found.")
  fps = _FPS.search(stream[1])
  width, height = int(size[1]), int(size[2])
  return VideoInfo(int(counts[-1]), height, width, float(fps[1]) if fps else 0.0)


def _raw_frames(path: str, vf: str, frames: int, height: int, width: int) -> np.ndarray:
  """Decodes through the filter graph `vf` -> uint8 [<= frames, height, width, 3].

  ffmpeg writes rgb24 to a pipe; every decoded frame passes through once
  (no frame rate conversion), and it stops after `frames` of them.
  """
  out = np.empty((frames, height, width, 3), np.uint8)
  n = _ffmpeg_into(
    path,
    ["-vf", vf, "-fps_mode", "passthrough", "-frames:v", str(frames)]
    + ["-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
    out,
  )
  if n % (height * width * 3) or n > out.nbytes:
    raise ValueError(
      f"Cannot decode video {path!r}: ffmpeg wrote {n} bytes, not whole "
      f"{width}x{height} frames (a rotated video?)."
    )
  return out[: n // (height * width * 3)]


def read_video(path: str) -> tuple[np.ndarray, float]:
  """Decodes every frame of any video ffmpeg reads -> (uint8 [T, H, W, 3], fps).

  All of it is held in memory; `read_frames` reads a few frames, resized.
  """
  info = probe_video(path)
  video = None
  if info.frames:
    video = _raw_frames(path, "null", info.frames, info.height, info.width)
  if video is None or not len(video):
    raise ValueError(f"Video {path!r} has no frames.")
  return video, info.fps


def read_frames(path: str, frames: int, height: int, width: int) -> np.ndarray:
  """`frames` evenly spaced frames of a video, resized -> uint8 [frames, H, W, 3].

  Frame i of the result is stored frame (i * T) // frames of the T the file
  holds. ffmpeg selects those frames and resizes them (bilinear, scaled to
  antialias when shrinking) before they reach Python, so memory is bounded by
  the result, not by the video's length or size. The resize is swscale's, in
  RGB: it matches `jax.image.resize(..., "bilinear", antialias=True)` of the
  full frames to a mean of < 3 levels of 255 (`tests/test_video_io.py`).

  Raises:
    ValueError: if the file is missing, unreadable (naming ffmpeg's reason) or
      holds fewer than `frames` frames.
  """
  total = probe_video(path).frames
  if total < frames:
    raise ValueError(f"Input video {path!r} has {total} frames; need {frames}.")
  picks = (np.arange(frames) * total) // frames
  # `n` is the decoded frame's index; commas inside the expression are escaped
  # from the filter graph's. Converted to RGB first: resized as the full
  # frames are (chroma subsampled YUV would blur colour edges differently).
  select = "+".join(f"eq(n\\,{i})" for i in picks)
  vf = f"select={select},format=rgb24,scale={width}:{height}:flags=bilinear"
  video = _raw_frames(path, vf, frames, height, width)
  if len(video) != frames:  # Fewer frames decode than the file stores.
    raise ValueError(
      f"Cannot decode video {path!r}: {len(video)} of the {frames} frames "
      f"{picks.tolist()} decoded (a damaged video?)."
    )
  return video


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
  names = {"mp4": f"{index:04d}.mp4", "gif": f"{index:04d}.gif"}
  names["png"] = f"{index:04d}.png"
  if save_npy:
    names["npy"] = f"{index:04d}.npy"
  writers = {
    "mp4": lambda path: write_mp4(path, video, fps),
    "gif": lambda path: write_gif(path, video, fps),
    "png": lambda path: write_png(path, contact_sheet(video)),
    "npy": lambda path: write_npy(path, video),
  }
  for kind, name in names.items():
    path = os.path.join(outdir, name)
    try:
      writers[kind](path)
    except OSError as e:
      # PIL and numpy raise e.g. "No space left on device" without the file.
      raise OSError(e.errno, f"Cannot write {path}: {e.strerror or e}") from e
  return names
