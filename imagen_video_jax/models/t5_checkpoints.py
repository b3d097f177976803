"""Loads T5 v1.1 encoder weights from t5x and Hugging Face checkpoints, offline.

All loaders return the `T5Encoder` parameter tree (nested dicts of float32
numpy arrays, t5x names: `token_embedder/...`, `encoder/...`), checked key by
key and shape by shape against the tree `T5Encoder(config)` expects. When no
config is given it is inferred from the checkpoint's own shapes.

Formats:
  * t5x legacy: a directory holding a msgpack file `checkpoint` of
    {'version', 'optimizer': {'target': params, 'state': ...}}, whose leaves are
    arrays or tensorstore specs (dicts with 'driver', 'kvstore', 'metadata')
    naming zarr arrays stored beside it, e.g. `target.encoder.layers_0...`.
  * t5x orbax: a directory written by orbax's PyTree handler; only the
    `target/{token_embedder,encoder}` leaves are read (partial restore).
  * Hugging Face safetensors with google/t5-v1_1-* names; torch `Linear`
    weights are [out, in] and are transposed to flax's [in, out].
"""

import os
import re
from collections.abc import Callable

import flax
import jax
import numpy as np

from imagen_video_jax.models import t5

Params = dict

_ENCODER_KEYS = ("token_embedder", "encoder")


def expected_shapes(config: t5.T5Config) -> dict[str, tuple[int, ...]]:
  """'/'-joined parameter name -> shape of `T5Encoder(config)` (no allocation)."""
  tokens = jax.ShapeDtypeStruct((1, 1), np.int32)
  mask = jax.ShapeDtypeStruct((1, 1), np.bool_)
  shapes = jax.eval_shape(
    lambda t, m: t5.T5Encoder(config).init(jax.random.key(0), t, m), tokens, mask
  )
  flat = flax.traverse_util.flatten_dict(flax.core.meta.unbox(shapes["params"]))
  return {"/".join(k): tuple(v.shape) for k, v in flat.items()}


def infer_config(
  shape_of: Callable[[str], tuple[int, ...]], num_layers: int
) -> t5.T5Config:
  """A T5Config from shapes given by t5x names (`shape_of(name)`)."""
  try:
    vocab, d_model = shape_of("token_embedder/embedding")
    num_heads, num_buckets = shape_of("encoder/relpos_bias/rel_embedding")
    _, joined = shape_of("encoder/layers_0/attention/query/kernel")
    _, d_ff = shape_of("encoder/layers_0/mlp/wi_0/kernel")
  except KeyError as e:
    raise ValueError(f"Cannot infer the T5 config: checkpoint lacks {e}.") from None
  return t5.T5Config(
    vocab_size=vocab,
    d_model=d_model,
    num_layers=num_layers,
    num_heads=num_heads,
    head_dim=joined // num_heads,
    d_ff=d_ff,
    num_buckets=num_buckets,
  )


def _assemble(
  read: Callable[[str], np.ndarray],
  config: t5.T5Config,
  describe: Callable[[str], str] = str,
) -> Params:
  """Reads every expected parameter with `read(name)`, checking shapes.

  `read` raises KeyError for a missing parameter; `describe(name)` names it
  in the checkpoint's own terms for the error message.
  """
  flat = {}
  for name, shape in expected_shapes(config).items():
    try:
      value = np.asarray(read(name), np.float32)
    except KeyError:
      raise ValueError(
        f"Checkpoint is missing {describe(name)} (T5 parameter {name}, expected "
        f"shape {shape})."
      ) from None
    if value.shape != shape:
      raise ValueError(
        f"Checkpoint entry {describe(name)} has shape {value.shape}; T5 parameter "
        f"{name} expects {shape}."
      )
    flat[tuple(name.split("/"))] = value
  return flax.traverse_util.unflatten_dict(flat)


def _num_layers(names, pattern: str) -> int:
  indices = {int(m.group(1)) for n in names if (m := re.match(pattern, n))}
  if not indices:
    raise ValueError(f"No encoder layers matching {pattern!r} in the checkpoint.")
  return max(indices) + 1


# ---------------------------------------------------------------------------
# Hugging Face safetensors.
# ---------------------------------------------------------------------------

_HF_LAYER = {
  "attention/query/kernel": ("layer.0.SelfAttention.q.weight", True),
  "attention/key/kernel": ("layer.0.SelfAttention.k.weight", True),
  "attention/value/kernel": ("layer.0.SelfAttention.v.weight", True),
  "attention/out/kernel": ("layer.0.SelfAttention.o.weight", True),
  "pre_attention_layer_norm/scale": ("layer.0.layer_norm.weight", False),
  "mlp/wi_0/kernel": ("layer.1.DenseReluDense.wi_0.weight", True),
  "mlp/wi_1/kernel": ("layer.1.DenseReluDense.wi_1.weight", True),
  "mlp/wo/kernel": ("layer.1.DenseReluDense.wo.weight", True),
  "pre_mlp_layer_norm/scale": ("layer.1.layer_norm.weight", False),
}
_HF_RELPOS = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"


def _hf_name(name: str, keys) -> tuple[str, bool]:
  """The HF key of a t5x name and whether the array is transposed."""
  if name == "token_embedder/embedding":
    for key in ("shared.weight", "encoder.embed_tokens.weight"):
      if key in keys:
        return key, False
    return "shared.weight", False
  if name == "encoder/relpos_bias/rel_embedding":
    return _HF_RELPOS, True  # HF stores [buckets, heads].
  if name == "encoder/encoder_norm/scale":
    return "encoder.final_layer_norm.weight", False
  m = re.fullmatch(r"encoder/layers_(\d+)/(.*)", name)
  suffix, transpose = _HF_LAYER[m.group(2)]
  return f"encoder.block.{m.group(1)}.{suffix}", transpose


def load_safetensors(path: str, config: t5.T5Config | None = None) -> Params:
  """T5Encoder params from a HF safetensors file (google/t5-v1_1-* names)."""
  from safetensors import safe_open

  if not os.path.isfile(path):
    raise ValueError(f"No safetensors file at {path!r}.")
  # framework='flax' reads bfloat16 checkpoints too (numpy has no bfloat16).
  with safe_open(path, framework="flax") as f:
    keys = set(f.keys())

    def read(name: str) -> np.ndarray:
      key, transpose = _hf_name(name, keys)
      if key not in keys:
        raise KeyError(key)
      value = np.asarray(f.get_tensor(key), np.float32)
      return value.T if transpose else value

    if config is None:
      config = infer_config(
        lambda n: read(n).shape, _num_layers(keys, r"encoder\.block\.(\d+)\.")
      )
    return _assemble(read, config, lambda n: repr(_hf_name(n, keys)[0]))


# ---------------------------------------------------------------------------
# t5x checkpoints.
# ---------------------------------------------------------------------------


def _is_ts_spec(x) -> bool:
  return isinstance(x, dict) and {"driver", "kvstore"} <= set(x)


def _leaf_pred(_, x) -> bool:
  """flatten_dict's leaf test: arrays and tensorstore specs are leaves."""
  return _is_ts_spec(x) or not isinstance(x, dict)


def _read_ts_spec(spec: dict, ckpt_dir: str) -> np.ndarray:
  """Reads a zarr array that a t5x tensorstore spec names relative to ckpt_dir."""
  import tensorstore as ts

  spec = {**spec, "kvstore": dict(spec["kvstore"])}
  if spec["kvstore"].get("driver") in ("gcs", "gfile"):
    spec["kvstore"] = {"driver": "file", "path": spec["kvstore"]["path"]}
  if "path" in spec["kvstore"]:  # tensorstore >= 0.1.14 layout.
    spec["kvstore"]["path"] = os.path.join(ckpt_dir, spec["kvstore"]["path"])
  else:
    spec["path"] = os.path.join(ckpt_dir, spec.pop("path"))
  return np.asarray(ts.open(spec, open=True).result().read().result())


def _find_step_dir(path: str) -> str:
  """`path` itself, or its latest `checkpoint_N` subdirectory."""
  if not os.path.isdir(path):
    raise ValueError(f"No t5x checkpoint directory at {path!r}.")
  steps = [
    (int(m.group(1)), d)
    for d in os.listdir(path)
    if (m := re.fullmatch(r"checkpoint_(\d+)", d))
  ]
  if steps and not os.path.exists(os.path.join(path, "checkpoint")):
    return os.path.join(path, max(steps)[1])
  return path


def _is_orbax(path: str) -> bool:
  markers = ("_METADATA", "manifest.ocdbt", "_CHECKPOINT_METADATA", "_sharding")
  return any(os.path.exists(os.path.join(path, m)) for m in markers)


def _legacy_target(path: str) -> tuple[dict, Callable[[object], np.ndarray]]:
  """The 'target' tree of a msgpack checkpoint and a leaf reader."""
  with open(os.path.join(path, "checkpoint"), "rb") as f:
    contents = flax.serialization.msgpack_restore(f.read())
  state = contents.get("optimizer", contents)  # version >= 1 nests 'optimizer'.
  if "target" not in state:
    raise ValueError(f"t5x checkpoint {path!r} has no 'target' entry.")

  def leaf(x) -> np.ndarray:
    return _read_ts_spec(x, path) if _is_ts_spec(x) else np.asarray(x)

  return state["target"], leaf


def _orbax_target(path: str) -> tuple[dict, Callable[[object], np.ndarray]]:
  """The encoder part of an orbax checkpoint's 'target' tree (partial restore)."""
  import orbax.checkpoint as ocp

  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(path)
  tree = getattr(tree, "item_metadata", tree)
  tree = getattr(tree, "tree", tree)
  if "target" not in tree:
    raise ValueError(f"orbax checkpoint {path!r} has no 'target' entry.")
  item = {
    "target": {k: tree["target"][k] for k in _ENCODER_KEYS if k in tree["target"]}
  }
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
  restored = checkpointer.restore(
    path,
    args=ocp.args.PyTreeRestore(
      item=item, restore_args=restore_args, partial_restore=True
    ),
  )
  return restored["target"], np.asarray


def load_t5x(path: str, config: t5.T5Config | None = None) -> Params:
  """T5Encoder params from a t5x checkpoint directory (legacy msgpack or orbax).

  `path` is a `checkpoint_N` directory or a directory holding several (the
  latest step is taken). Only `target/token_embedder` and `target/encoder`
  are read.
  """
  path = _find_step_dir(os.path.abspath(path))
  if _is_orbax(path):
    target, leaf = _orbax_target(path)
  elif os.path.isfile(os.path.join(path, "checkpoint")):
    target, leaf = _legacy_target(path)
  else:
    raise ValueError(
      f"{path!r} is neither a legacy t5x checkpoint (no 'checkpoint' file) nor an "
      "orbax checkpoint."
    )
  flat = {
    "/".join(k): v
    for k, v in flax.traverse_util.flatten_dict(target, is_leaf=_leaf_pred).items()
    if k[0] in _ENCODER_KEYS
  }

  def read(name: str) -> np.ndarray:
    return leaf(flat[name])

  def shape_of(name: str) -> tuple[int, ...]:
    x = flat[name]
    if _is_ts_spec(x):
      return tuple(x["metadata"]["shape"])
    return tuple(np.shape(x))

  if config is None:
    config = infer_config(shape_of, _num_layers(flat, r"encoder/layers_(\d+)/"))
  return _assemble(read, config, lambda n: f"'target/{n}'")
