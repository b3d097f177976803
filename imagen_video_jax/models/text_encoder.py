"""The frozen text encoder of every cascade stage: tokenizer + T5 encoder + params.

Imagen Video conditions on the embeddings of a frozen T5-XXL (paper Sec. 2).
With `config.text.checkpoint` set, the weights come from a real T5 v1.1
checkpoint (a t5x directory or a `.safetensors` file) and `config.text.vocab`
names its sentencepiece model. Without one — the offline default
`encoder='byte_t5'` — the encoder is a T5 of size `config.text.t5_size` with
RANDOM weights drawn deterministically from `config.text.seed`, reading ByT5
byte ids: it is not a pretrained language model, only a fixed, seeded,
position-aware featuriser of the caption's bytes. The demo's captions come
from a tiny grammar, so the diffusion model can learn to read these features;
with real captions, use a real checkpoint.
"""

import dataclasses
import functools
from collections.abc import Sequence

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from imagen_video_jax.models import t5, t5_checkpoints, tokenizers

# ByT5's embedding table: 3 specials + 256 bytes + 125 extra ids.
BYTE_VOCAB_SIZE = 384


@dataclasses.dataclass
class TextEncoder:
  """A tokenizer, a `T5Encoder` and its frozen params."""

  tokenizer: tokenizers.Tokenizer
  model: t5.T5Encoder
  params: dict

  @classmethod
  def from_config(
    cls, text_config: ml_collections.ConfigDict, *, dtype: str = "float32"
  ) -> "TextEncoder":
    """Builds the encoder of `config.text` (see module docstring)."""
    tokenizer, model = make_model(text_config, dtype=dtype)
    config = model.config
    path = text_config.checkpoint
    if path:
      if path.endswith(".safetensors"):
        params = t5_checkpoints.load_safetensors(path, config)
      else:
        params = t5_checkpoints.load_t5x(path, config)
    else:
      params = init_params(model, text_config.seed)
    return cls(tokenizer, model, jax.tree.map(jnp.asarray, params))

  @property
  def dim(self) -> int:
    """Embedding width D."""
    return self.model.config.d_model

  def apply(self, params: dict, tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """Pure encoder: tokens [B, L] int32, mask [B, L] bool -> [B, L, D] f32."""
    return self.model.apply({"params": params}, tokens, mask)

  def encode(self, texts: Sequence[str]) -> tuple[jax.Array, np.ndarray]:
    """Captions -> (embeddings f32 [B, L, D], mask bool [B, L]), L = max_length."""
    tokens, mask = self.tokenizer.tokenize(texts)
    return _jit_apply(self.model, self.params, tokens, mask), mask


def make_model(
  text_config: ml_collections.ConfigDict, *, dtype: str = "float32"
) -> tuple[tokenizers.Tokenizer, t5.T5Encoder]:
  """The tokenizer and the (weightless) T5 encoder of `config.text`.

  Raises:
    ValueError: if the tokenizer emits ids the T5 size does not embed.
  """
  tokenizer = tokenizers.make_tokenizer(text_config)
  overrides = dict(dtype=dtype)
  if text_config.encoder == "byte_t5":
    overrides["vocab_size"] = BYTE_VOCAB_SIZE
  config = t5.t5_config(text_config.t5_size, **overrides)
  if tokenizer.vocab_size > config.vocab_size:
    raise ValueError(
      f"Tokenizer emits {tokenizer.vocab_size} ids but T5 size "
      f"{text_config.t5_size!r} embeds only {config.vocab_size}."
    )
  return tokenizer, t5.T5Encoder(config)


@functools.partial(jax.jit, static_argnums=0)
def _jit_apply(model: t5.T5Encoder, params, tokens, mask) -> jax.Array:
  # Static (hashable) model: encoders of equal configs share one compilation.
  return model.apply({"params": params}, tokens, mask)


@functools.partial(jax.jit, static_argnums=0)
def _jit_init(model: t5.T5Encoder, rng: jax.Array):
  tokens = jnp.ones((1, 1), jnp.int32)
  return model.init(rng, tokens, tokens > 0)["params"]


def init_params(model: t5.T5Encoder, seed: int) -> dict:
  """Deterministic t5x-style random init of `model` from `seed` (unboxed)."""
  return flax.core.meta.unbox(_jit_init(model, jax.random.key(seed)))
