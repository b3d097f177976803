"""Tests of the T5 v1.1 encoder, its checkpoint loaders and the TextEncoder.

The reference implementation is Hugging Face's PyTorch `T5EncoderModel`
(test-only extras torch + transformers<5); checkpoints are written by the
tests themselves in each format (no network).
"""

import os

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from imagen_video_jax.models import t5, t5_checkpoints, text_encoder

os.environ.setdefault("USE_TF", "0")  # Keep transformers from importing TF.

CONFIG = t5.t5_config("tiny", vocab_size=384)
LENGTH = 150  # > max_distance 128, so the logarithmic and last buckets are used.


@pytest.fixture(scope="module")
def encode():
  return jax.jit(lambda p, t, m: t5.T5Encoder(CONFIG).apply({"params": p}, t, m))


@pytest.fixture(scope="module")
def batch():
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, CONFIG.vocab_size, (2, LENGTH)).astype(np.int32)
  tokens[1, 90:] = 0  # Second caption padded.
  return tokens, tokens > 0


@pytest.fixture(scope="module")
def params():
  model = t5.T5Encoder(CONFIG)
  return jax.tree.map(np.asarray, text_encoder.init_params(model, seed=0))


def _flat(tree) -> dict[str, np.ndarray]:
  return {"/".join(k): v for k, v in flax.traverse_util.flatten_dict(tree).items()}


def _assert_same_tree(a, b):
  fa, fb = _flat(a), _flat(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


# ---------------------------------------------------------------------------
# Architecture.
# ---------------------------------------------------------------------------


def test_param_tree_has_t5x_names_and_logical_axes():
  shapes = jax.eval_shape(
    lambda t: t5.T5Encoder(CONFIG).init(jax.random.key(0), t, t > 0),
    jax.ShapeDtypeStruct((1, 4), jnp.int32),
  )
  specs = _flat(nn.get_partition_spec(shapes)["params"])
  layer = {
    "attention/query/kernel": ("embed", "joined_kv"),
    "attention/key/kernel": ("embed", "joined_kv"),
    "attention/value/kernel": ("embed", "joined_kv"),
    "attention/out/kernel": ("joined_kv", "embed"),
    "pre_attention_layer_norm/scale": ("embed",),
    "mlp/wi_0/kernel": ("embed", "mlp"),
    "mlp/wi_1/kernel": ("embed", "mlp"),
    "mlp/wo/kernel": ("mlp", "embed"),
    "pre_mlp_layer_norm/scale": ("embed",),
  }
  expected = {
    "token_embedder/embedding": ("vocab", "embed"),
    "encoder/relpos_bias/rel_embedding": ("heads", "relpos_buckets"),
    "encoder/encoder_norm/scale": ("embed",),
  }
  for i in range(CONFIG.num_layers):
    expected.update({f"encoder/layers_{i}/{k}": v for k, v in layer.items()})
  assert {k: tuple(v) for k, v in specs.items()} == expected


def test_xxl_parameter_count_matches_closed_form():
  shapes = t5_checkpoints.expected_shapes(t5.t5_config("xxl"))
  d, f, n_layers = 4096, 10240, 24
  per_layer = 4 * d * d + 3 * d * f + 2 * d  # q, k, v, o; wi_0, wi_1, wo; 2 norms.
  total = 32128 * d + 64 * 32 + n_layers * per_layer + d
  assert sum(int(np.prod(s)) for s in shapes.values()) == total  # ~4.76e9.
  assert shapes["encoder/layers_23/attention/query/kernel"] == (4096, 4096)


def test_relative_position_bucket_known_values():
  rel = np.array([0, -1, 1, -7, -8, -200, 200, 127, -1000])
  np.testing.assert_array_equal(
    t5.relative_position_bucket(rel), [0, 1, 17, 7, 8, 15, 31, 31, 15]
  )


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_position_bucket_matches_hf(bidirectional):
  torch = pytest.importorskip("torch")
  modeling_t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
  rel = np.arange(-300, 301)
  ref = modeling_t5.T5Attention._relative_position_bucket(
    torch.tensor(rel), bidirectional=bidirectional, num_buckets=32, max_distance=128
  )
  ours = t5.relative_position_bucket(rel, bidirectional=bidirectional)
  np.testing.assert_array_equal(ours, ref.numpy())


def test_padding_leaves_valid_positions_unchanged(encode, params, batch):
  tokens, mask = batch
  short = encode(params, tokens[1:, :90], mask[1:, :90])
  padded = encode(params, tokens[1:], mask[1:])
  np.testing.assert_allclose(padded[:, :90], short, atol=1e-5)


def test_bfloat16_compute_is_close_to_float32(encode, params, batch):
  tokens, mask = batch
  bf16 = t5.T5Encoder(t5.t5_config("tiny", vocab_size=384, dtype="bfloat16"))
  out = jax.jit(bf16.apply)({"params": params}, tokens, mask)
  ref = encode(params, tokens, mask)
  assert out.dtype == jnp.float32
  assert float(jnp.abs(out - ref).max()) < 0.1 * float(jnp.abs(ref).max())


# ---------------------------------------------------------------------------
# Hugging Face: numerical agreement and the safetensors loader.
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
  """A random tiny HF T5EncoderModel and its safetensors export."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from safetensors.torch import save_file

  torch.manual_seed(0)
  config = transformers.T5Config(
    vocab_size=CONFIG.vocab_size,
    d_model=CONFIG.d_model,
    d_kv=CONFIG.head_dim,
    d_ff=CONFIG.d_ff,
    num_layers=CONFIG.num_layers,
    num_heads=CONFIG.num_heads,
    feed_forward_proj="gated-gelu",
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    dropout_rate=0.0,
  )
  model = transformers.T5EncoderModel(config).eval()
  with torch.no_grad():
    for p in model.parameters():  # HF's init is tiny; make every weight matter.
      p.normal_(0.0, 0.5)
  # The embedding is tied (shared / encoder.embed_tokens); safetensors wants one.
  state = {
    k: v.detach().clone().contiguous()
    for k, v in model.state_dict().items()
    if k != "encoder.embed_tokens.weight"
  }
  path = str(tmp_path_factory.mktemp("hf") / "model.safetensors")
  save_file(state, path)
  return model, path, {k: v.numpy() for k, v in state.items()}


def test_matches_hf_t5_encoder_model(hf, encode, batch):
  import torch

  model, path, _ = hf
  tokens, mask = batch
  params = t5_checkpoints.load_safetensors(path)  # Config inferred from shapes.
  with torch.no_grad():
    ref = model(
      input_ids=torch.tensor(tokens, dtype=torch.long),
      attention_mask=torch.tensor(mask, dtype=torch.long),
    ).last_hidden_state.numpy()
  out = np.asarray(encode(params, tokens, mask))
  assert np.abs(ref).max() > 1.0  # Outputs are not trivially small.
  np.testing.assert_array_less(np.abs(out - ref).max(), 1e-4)


def test_safetensors_missing_key_and_wrong_shape(hf, tmp_path):
  from safetensors.numpy import save_file

  _, _, state = hf
  missing = dict(state)
  del missing["encoder.block.1.layer.1.DenseReluDense.wi_0.weight"]
  save_file(missing, str(tmp_path / "missing.safetensors"))
  with pytest.raises(ValueError, match=r"block\.1\.layer\.1\.DenseReluDense\.wi_0"):
    t5_checkpoints.load_safetensors(str(tmp_path / "missing.safetensors"), CONFIG)

  wrong = dict(state)
  wrong["encoder.final_layer_norm.weight"] = np.ones((63,), np.float32)
  save_file(wrong, str(tmp_path / "wrong.safetensors"))
  with pytest.raises(ValueError, match=r"final_layer_norm.*\(63,\).*\(64,\)"):
    t5_checkpoints.load_safetensors(str(tmp_path / "wrong.safetensors"))


# ---------------------------------------------------------------------------
# t5x checkpoints: legacy msgpack + tensorstore, and orbax.
# ---------------------------------------------------------------------------


def _write_legacy_t5x(step_dir, target: dict) -> None:
  """Writes `target` the way t5x's Checkpointer lays out a checkpoint.

  Matrices go to zarr arrays named 'target.<path with dots>' beside the
  msgpack file, which holds their tensorstore specs (relative paths); vectors
  are stored inline in the msgpack file, as t5x does for unpartitioned params.
  """
  import tensorstore as ts

  os.makedirs(step_dir)

  def write(path, x):
    if isinstance(x, dict) or np.ndim(x) < 2:
      return x
    name = "target." + ".".join(path)
    metadata = {"compressor": {"id": "gzip"}, "shape": list(x.shape)}
    metadata["chunks"] = list(x.shape)
    spec = {"driver": "zarr", "dtype": "float32", "metadata": metadata}
    ts.open(
      {**spec, "kvstore": {"driver": "file", "path": os.path.join(step_dir, name)}},
      create=True,
    ).result().write(x).result()
    return {**spec, "kvstore": {"driver": "file", "path": name}}

  flat = flax.traverse_util.flatten_dict(target)
  written = flax.traverse_util.unflatten_dict({k: write(k, v) for k, v in flat.items()})
  # A decoder leaf whose zarr array does not exist: it must never be read.
  written["decoder"] = {
    "logits_dense": {"kernel": {"driver": "zarr", "kvstore": {"path": "nope"}}}
  }
  contents = {"version": 3, "optimizer": {"target": written, "state": {"step": 5}}}
  with open(os.path.join(step_dir, "checkpoint"), "wb") as f:
    f.write(flax.serialization.msgpack_serialize(contents))


def test_legacy_t5x_roundtrip(params, encode, batch, tmp_path):
  _write_legacy_t5x(str(tmp_path / "checkpoint_5"), params)
  loaded = t5_checkpoints.load_t5x(str(tmp_path))  # Picks checkpoint_5.
  _assert_same_tree(loaded, params)
  tokens, mask = batch
  np.testing.assert_array_equal(
    encode(loaded, tokens, mask), encode(params, tokens, mask)
  )
  deeper = t5.t5_config("tiny", vocab_size=384, num_layers=3)
  with pytest.raises(ValueError, match="target/encoder/layers_2/"):
    t5_checkpoints.load_t5x(str(tmp_path / "checkpoint_5"), deeper)


def test_orbax_t5x_roundtrip(params, tmp_path):
  import orbax.checkpoint as ocp

  decoder = {"logits_dense": {"kernel": np.zeros((64, 384), np.float32)}}
  state = {"target": {**params, "decoder": decoder}, "state": {"step": np.int32(3)}}
  ocp.PyTreeCheckpointer().save(tmp_path / "checkpoint_3", state)
  loaded = t5_checkpoints.load_t5x(str(tmp_path / "checkpoint_3"))
  _assert_same_tree(loaded, params)


# ---------------------------------------------------------------------------
# TextEncoder.
# ---------------------------------------------------------------------------


def _text_config(**kw) -> ml_collections.ConfigDict:
  c = dict(encoder="byte_t5", t5_size="tiny", checkpoint="", vocab="")
  c.update(max_length=24, seed=0, precomputed=False)
  return ml_collections.ConfigDict({**c, **kw})


def test_text_encoder_seeded_default_is_deterministic(params):
  enc = text_encoder.TextEncoder.from_config(_text_config())
  assert enc.dim == 64
  _assert_same_tree(jax.tree.map(np.asarray, enc.params), params)
  other = text_encoder.TextEncoder.from_config(_text_config(seed=1))
  assert not np.array_equal(
    other.params["token_embedder"]["embedding"], params["token_embedder"]["embedding"]
  )
  emb, mask = enc.encode(["a red digit three", "a blue seven"])
  assert emb.shape == (2, 24, 64) and emb.dtype == jnp.float32
  np.testing.assert_array_equal(mask.sum(1), [18, 13])  # Bytes + EOS.
  tokens, _ = enc.tokenizer.tokenize(["a red digit three", "a blue seven"])
  # `apply` is pure and differentiable-through (frozen under stop_gradient).
  ref = jax.jit(enc.apply)(enc.params, tokens, mask)
  np.testing.assert_allclose(emb, ref, atol=1e-6)


def test_text_encoder_loads_checkpoint(hf):
  _, path, _ = hf
  enc = text_encoder.TextEncoder.from_config(_text_config(checkpoint=path))
  _assert_same_tree(
    jax.tree.map(np.asarray, enc.params), t5_checkpoints.load_safetensors(path)
  )
