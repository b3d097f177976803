"""Tokenizers for the frozen T5 text encoder: sentencepiece (T5) and bytes (ByT5).

Both follow T5's id conventions: pad 0, eos 1, unk 2; each caption becomes
its ids followed by EOS, truncated so that EOS always stays last
(ids[:max_length - 1] + [eos]), then right-padded with 0 to `max_length`.

`ByteTokenizer` is the ByT5 scheme (Xue et al. 2022): UTF-8 bytes shifted by
3, so it needs no vocabulary file and is the offline default.
"""

import abc
from collections.abc import Sequence

import ml_collections
import numpy as np

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2


class Tokenizer(abc.ABC):
  """Turns captions into fixed-length id arrays with a validity mask."""

  def __init__(self, max_length: int = 128):
    if max_length < 1:
      raise ValueError(f"max_length must be >= 1, got {max_length}.")
    self.max_length = max_length

  @property
  @abc.abstractmethod
  def vocab_size(self) -> int:
    """Number of ids the tokenizer can emit (largest id + 1)."""

  @abc.abstractmethod
  def encode_ids(self, text: str) -> list[int]:
    """The ids of `text` without EOS or padding."""

  def num_tokens(self, text: str) -> int:
    """Tokens `text` needs including EOS; more than max_length means truncation."""
    return len(self.encode_ids(text)) + 1

  def tokenize(
    self, texts: Sequence[str], *, return_truncated: bool = False
  ) -> tuple[np.ndarray, ...]:
    """Captions -> (tokens int32 [B, L], mask bool [B, L][, truncated bool [B]]).

    L = max_length. `truncated[i]` says caption i lost tokens to fit.
    """
    if isinstance(texts, str | bytes):
      raise ValueError(f"tokenize expects a list of strings, got {type(texts)}.")
    tokens = np.full((len(texts), self.max_length), PAD_ID, np.int32)
    mask = np.zeros((len(texts), self.max_length), np.bool_)
    truncated = np.zeros((len(texts),), np.bool_)
    for i, text in enumerate(texts):
      if not isinstance(text, str):
        raise ValueError(f"Caption {i} is not a string: {text!r}.")
      ids = self.encode_ids(text)
      truncated[i] = len(ids) + 1 > self.max_length
      ids = ids[: self.max_length - 1] + [EOS_ID]
      tokens[i, : len(ids)] = ids
      mask[i, : len(ids)] = True
    if return_truncated:
      return tokens, mask, truncated
    return tokens, mask


class ByteTokenizer(Tokenizer):
  """ByT5 tokenizer: id = UTF-8 byte + 3 (ids 3..258); needs no file."""

  OFFSET = 3  # pad, eos, unk come first.

  @property
  def vocab_size(self) -> int:
    return 256 + self.OFFSET

  def encode_ids(self, text: str) -> list[int]:
    return [b + self.OFFSET for b in text.encode("utf-8")]

  def decode(self, ids: Sequence[int]) -> str:
    """Inverse of `encode_ids`, stopping at EOS/pad; special ids are dropped."""
    out = bytearray()
    for i in ids:
      if i in (PAD_ID, EOS_ID):
        break
      if self.OFFSET <= i < self.vocab_size:
        out.append(i - self.OFFSET)
    return out.decode("utf-8", errors="replace")


class SentencePieceTokenizer(Tokenizer):
  """T5's sentencepiece tokenizer from a `.model` file (e.g. spiece.model)."""

  def __init__(self, path: str, max_length: int = 128):
    super().__init__(max_length)
    import sentencepiece as spm

    self.path = path
    self._sp = spm.SentencePieceProcessor()
    try:
      self._sp.Load(path)
    except OSError as e:
      raise ValueError(f"Cannot load sentencepiece model {path!r}: {e}") from None
    if self._sp.pad_id() != PAD_ID or self._sp.eos_id() != EOS_ID:
      raise ValueError(
        f"Sentencepiece model {path!r} has pad {self._sp.pad_id()} and eos "
        f"{self._sp.eos_id()}; T5 needs pad {PAD_ID} and eos {EOS_ID}."
      )

  @property
  def vocab_size(self) -> int:
    return self._sp.GetPieceSize()

  def encode_ids(self, text: str) -> list[int]:
    return list(self._sp.EncodeAsIds(text))


def make_tokenizer(text_config: ml_collections.ConfigDict) -> Tokenizer:
  """The tokenizer of `config.text`: 'byte_t5' -> bytes, 't5' -> sentencepiece."""
  if text_config.encoder == "byte_t5":
    return ByteTokenizer(text_config.max_length)
  if text_config.encoder == "t5":
    if not text_config.vocab:
      raise ValueError("config.text.encoder='t5' needs config.text.vocab (a .model).")
    return SentencePieceTokenizer(text_config.vocab, text_config.max_length)
  raise ValueError(
    f"Unknown config.text.encoder {text_config.encoder!r}; expected 'byte_t5' or 't5'."
  )
