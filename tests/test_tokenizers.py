"""Tests of the byte (ByT5) and sentencepiece (T5) tokenizers."""

import ml_collections
import numpy as np
import pytest

from imagen_video_jax.models import tokenizers

SENTENCES = [
  "a red digit three bounces left and right",
  "a blue digit seven moves up and down",
  "a green digit one bounces up and down",
  "a yellow digit zero moves left and right",
  "a white digit five bounces diagonally",
  "a purple digit two moves slowly to the left",
  "an orange digit nine moves quickly to the right",
  "a cyan digit four bounces around the frame",
]


def _text_config(**kw) -> ml_collections.ConfigDict:
  base = dict(encoder="byte_t5", t5_size="tiny", checkpoint="", vocab="")
  return ml_collections.ConfigDict(dict(base, seed=0, **{"max_length": 16, **kw}))


def test_byte_tokenizer_ids_eos_padding_and_mask():
  tok = tokenizers.ByteTokenizer(max_length=6)
  tokens, mask = tok.tokenize(["hi", "", "é"])
  # 'h' = 104, 'i' = 105 -> +3; 'é' = UTF-8 0xC3 0xA9 -> 198, 172.
  np.testing.assert_array_equal(
    tokens,
    [[107, 108, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0], [198, 172, 1, 0, 0, 0]],
  )
  assert tokens.dtype == np.int32 and mask.dtype == np.bool_
  np.testing.assert_array_equal(mask, tokens > 0)
  assert tok.vocab_size == 259
  assert tok.decode(tokens[2]) == "é"


def test_truncation_keeps_eos_and_is_reported():
  tok = tokenizers.ByteTokenizer(max_length=4)
  tokens, mask, truncated = tok.tokenize(["hello", "hey"], return_truncated=True)
  np.testing.assert_array_equal(tokens, [[107, 104, 111, 1], [107, 104, 124, 1]])
  assert mask.all()
  np.testing.assert_array_equal(truncated, [True, False])
  assert tok.num_tokens("hello") == 6 and tok.num_tokens("hey") == 4


@pytest.mark.parametrize("bad", ["a string", ["ok", 3]])
def test_bad_input_raises(bad):
  with pytest.raises(ValueError, match="string"):
    tokenizers.ByteTokenizer().tokenize(bad)
  with pytest.raises(ValueError, match="max_length"):
    tokenizers.ByteTokenizer(max_length=0)


@pytest.fixture(scope="module")
def spm_path(tmp_path_factory):
  spm = pytest.importorskip("sentencepiece")
  prefix = tmp_path_factory.mktemp("spm") / "tiny"
  spm.SentencePieceTrainer.train(
    sentence_iterator=iter(SENTENCES),
    model_prefix=str(prefix),
    vocab_size=60,
    model_type="unigram",
    pad_id=0,
    eos_id=1,
    unk_id=2,
    bos_id=-1,
    hard_vocab_limit=False,
    minloglevel=2,
  )
  return str(prefix) + ".model"


def test_sentencepiece_tokenizer_appends_eos_and_pads(spm_path):
  import sentencepiece as spm

  sp = spm.SentencePieceProcessor(model_file=spm_path)
  tok = tokenizers.make_tokenizer(
    _text_config(encoder="t5", vocab=spm_path, max_length=32)
  )
  assert isinstance(tok, tokenizers.SentencePieceTokenizer)
  texts = [SENTENCES[0], "a red digit"]
  tokens, mask = tok.tokenize(texts)
  for row, m, text in zip(tokens, mask, texts):
    ids = sp.encode(text) + [1]
    assert 2 < len(ids) <= 32
    np.testing.assert_array_equal(row[: len(ids)], ids)
    assert (row[len(ids) :] == 0).all()
    assert m.sum() == len(ids)
  assert tok.vocab_size == sp.get_piece_size()


def test_sentencepiece_rejects_non_t5_ids(tmp_path):
  spm = pytest.importorskip("sentencepiece")
  prefix = tmp_path / "default_ids"
  spm.SentencePieceTrainer.train(
    sentence_iterator=iter(SENTENCES),
    model_prefix=str(prefix),
    vocab_size=60,
    hard_vocab_limit=False,
    minloglevel=2,
  )  # Default ids: unk 0, bos 1, eos 2, no pad.
  with pytest.raises(ValueError, match="pad"):
    tokenizers.SentencePieceTokenizer(str(prefix) + ".model")


def test_make_tokenizer_choices_and_errors():
  assert isinstance(tokenizers.make_tokenizer(_text_config()), tokenizers.ByteTokenizer)
  assert tokenizers.make_tokenizer(_text_config()).max_length == 16
  with pytest.raises(ValueError, match="vocab"):
    tokenizers.make_tokenizer(_text_config(encoder="t5"))
  with pytest.raises(ValueError, match="'clip'"):
    tokenizers.make_tokenizer(_text_config(encoder="clip"))
