"""CLIP score and CLIP R-precision of videos against their prompts.

Imagen Video (Table 1) reports both. No CLIP weights ship with any installed
package, so `load_clip(path)` reads a Hugging Face CLIP directory the user
provides (e.g. a local copy of openai/clip-vit-base-patch32: config.json,
flax_model.msgpack or pytorch_model.bin, the tokenizer's vocab.json and
merges.txt, preprocessor_config.json) with transformers' FlaxCLIPModel, and
CLIP's own image processor (bicubic resize, centre crop, CLIP mean/std).

- CLIP score (CLIPSIM, Wu et al. 2021; as torchmetrics' CLIPScore, Hessel et
  al. 2021 with w = 100): max(100 cos(E_frame, E_prompt), 0), averaged over the
  frames of a video and over videos.
- CLIP R-precision (Park et al. 2021): the video embedding (normalised mean of
  its normalised frame embeddings) is compared with its own prompt and
  `num_distractors` other prompts of the set; R-precision is the fraction of
  videos whose own prompt is the most similar (R = 1).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Clip:
  """A loaded CLIP: Flax model, tokenizer and image processor."""

  model: Any
  tokenizer: Any
  processor: Any

  def embed_text(self, prompts: list[str]) -> np.ndarray:
    """L2-normalised text embeddings float64 [N, D]."""
    max_len = self.model.config.text_config.max_position_embeddings
    tok = self.tokenizer(
      prompts,
      padding="max_length",
      max_length=max_len,
      truncation=True,
      return_tensors="np",
    )
    emb = self.model.get_text_features(
      input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]
    )
    return _normalise(emb)

  def embed_images(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """L2-normalised image embeddings float64 [N, D] of uint8 [N, H, W, 3]."""
    out = []
    for i in range(0, len(images), batch_size):
      pixels = self.processor(
        images=list(images[i : i + batch_size]), return_tensors="np"
      )
      out.append(self.model.get_image_features(pixel_values=pixels["pixel_values"]))
    return _normalise(np.concatenate(out))


def _normalise(x: Any) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def load_clip(path: str) -> Clip:
  """Loads a Hugging Face CLIP directory (Flax or PyTorch weights), offline."""
  from transformers import CLIPImageProcessor, CLIPTokenizer, FlaxCLIPModel

  if not os.path.isdir(path):
    raise ValueError(f"CLIP weights {path!r} is not a directory.")
  try:
    from_pt = not os.path.exists(os.path.join(path, "flax_model.msgpack"))
    model = FlaxCLIPModel.from_pretrained(path, from_pt=from_pt, local_files_only=True)
    tokenizer = CLIPTokenizer.from_pretrained(path, local_files_only=True)
    processor = CLIPImageProcessor.from_pretrained(path, local_files_only=True)
  except (OSError, ValueError) as e:
    raise ValueError(f"Cannot load CLIP from {path!r}: {e}") from e
  return Clip(model, tokenizer, processor)


def frame_embeddings(clip: Clip, videos: np.ndarray, num_frames: int = 0) -> np.ndarray:
  """Normalised CLIP embeddings float64 [N, F, D] of videos uint8 [N, T, H, W, 3].

  num_frames: F frames evenly spaced over T (0: all T frames).
  """
  n, t = videos.shape[:2]
  f = t if num_frames <= 0 else min(num_frames, t)
  videos = videos[:, np.linspace(0, t - 1, f).round().astype(int)]
  return clip.embed_images(videos.reshape(n * f, *videos.shape[2:])).reshape(n, f, -1)


def clip_score(frame_emb: np.ndarray, text_emb: np.ndarray) -> float:
  """Mean over videos and frames of max(100 cos(frame, prompt), 0).

  Args:
    frame_emb: [N, F, D] normalised frame embeddings.
    text_emb: [N, D] normalised embeddings of each video's prompt.
  """
  cos = np.einsum("nfd,nd->nf", frame_emb, text_emb)
  return float(np.maximum(100.0 * cos, 0.0).mean())  # Hessel et al. 2021, Eq. 1.


def r_precision(
  frame_emb: np.ndarray,
  text_emb: np.ndarray,
  prompts: list[str],
  num_distractors: int = 99,
  seed: int = 0,
) -> float:
  """CLIP R-precision (R = 1) with distractors drawn from the other prompts.

  Args:
    frame_emb: [N, F, D] normalised frame embeddings.
    text_emb: [N, D] normalised embeddings of each video's prompt.
    prompts: the N prompts; distractors are prompts whose text differs from
      the video's own, each distinct text counted once.
    num_distractors: at most this many distractors per video (fewer when the
      set has fewer distinct other prompts).
    seed: of the distractor draw.

  Returns:
    Fraction of videos whose own prompt scores strictly above every distractor.
  """
  if not len(prompts) == len(frame_emb) == len(text_emb):
    raise ValueError(
      f"{len(prompts)} prompts, {len(frame_emb)} videos, {len(text_emb)} embeddings."
    )
  video = _normalise(frame_emb.mean(axis=1))
  first = {}  # Distinct prompt text -> index of its first occurrence.
  for i, p in enumerate(prompts):
    first.setdefault(p, i)
  if len(first) < 2:
    raise ValueError(f"R-precision needs >= 2 distinct prompts; got {list(first)}.")
  rng = np.random.default_rng(seed)
  hits = []
  for i, p in enumerate(prompts):
    others = np.array([j for q, j in first.items() if q != p], np.int64)
    if len(others) > num_distractors:
      others = rng.choice(others, num_distractors, replace=False)
    own = video[i] @ text_emb[i]
    hits.append(own > (text_emb[others] @ video[i]).max())
  return float(np.mean(hits))
