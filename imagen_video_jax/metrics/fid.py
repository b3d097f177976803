"""Frame FID with an InceptionV3 in Flax (the distance itself: `frechet.py`).

FID (Heusel et al., 2017) is the Fréchet distance between Gaussians fitted to
the 2048-d pool features of InceptionV3 (Szegedy et al., 2016); Imagen Video
(Table 1) reports it on frames. The network below is the FID variant of
InceptionV3 (as in the TF graph of the original FID code and pytorch-fid: the
average pools of Mixed_5*, 6* and 7b exclude padding, Mixed_7c pools by max).
Its parameter names follow torchvision's (`Mixed_5b/branch1x1/conv`, ...), so
`from_torch_state_dict` converts pytorch-fid's `pt_inception-2015-12-05`
weights. No weights ship with this package: `load_inception(path)` reads a
Flax msgpack of {'params', 'batch_stats'} that the user provides.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from imagen_video_jax.metrics import frechet

FEATURE_DIM = 2048
INPUT_SIZE = 299


class BasicConv(nn.Module):
  """Conv (no bias) -> BatchNorm (eps 1e-3, running stats) -> ReLU."""

  features: int
  kernel: tuple[int, int]
  strides: int = 1
  padding: str | Sequence[tuple[int, int]] = "SAME"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Conv(
      self.features,
      self.kernel,
      self.strides,
      self.padding,
      use_bias=False,
      name="conv",
    )(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


def _pool(x: jax.Array, kind: str) -> jax.Array:
  """3x3 pools: 'avg' (stride 1, over unpadded pixels), 'max' (stride 1), 'max_s2'."""
  if kind == "avg":
    return nn.avg_pool(x, (3, 3), padding="SAME", count_include_pad=False)
  if kind == "max":
    return nn.max_pool(x, (3, 3), padding="SAME")
  return nn.max_pool(x, (3, 3), (2, 2), "VALID")


Conv = tuple  # (features, kernel[, strides[, padding]]) of one BasicConv.


class InceptionBlock(nn.Module):
  """Parallel conv branches and a pooling branch, concatenated on channels.

  Attributes:
    branches: per branch, a chain of (name, Conv); a name 'a|b' with a pair of
      Convs runs both on the same input and concatenates them (InceptionE).
    pool: pooling of the pool branch ('avg' | 'max' | 'max_s2').
    pool_features: 1x1 conv after the pool ('branch_pool'); 0 for none.
  """

  branches: tuple[tuple[tuple[str, Conv], ...], ...]
  pool: str
  pool_features: int = 0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    outs = []
    for branch in self.branches:
      y = x
      for name, conv in branch:
        if "|" in name:
          y = jnp.concatenate(
            [BasicConv(*c, name=n)(y) for n, c in zip(name.split("|"), conv)], -1
          )
        else:
          y = BasicConv(*conv, name=name)(y)
      outs.append(y)
    y = _pool(x, self.pool)
    if self.pool_features:
      y = BasicConv(self.pool_features, (1, 1), name="branch_pool")(y)
    return jnp.concatenate([*outs, y], axis=-1)


def _chain(prefix: str, convs: Sequence[Conv], suffixes: str) -> tuple:
  """((prefix + suffix, conv), ...): one branch of numbered convs."""
  return tuple((prefix + sfx, c) for sfx, c in zip(suffixes.split(), convs))


K1, K3, K5, K17, K71 = (1, 1), (3, 3), (5, 5), (1, 7), (7, 1)


def _block_a(pool_features: int, name: str) -> InceptionBlock:
  return InceptionBlock(
    (
      (("branch1x1", (64, K1)),),
      _chain("branch5x5_", [(48, K1), (64, K5)], "1 2"),
      _chain("branch3x3dbl_", [(64, K1), (96, K3), (96, K3)], "1 2 3"),
    ),
    "avg",
    pool_features,
    name=name,
  )


def _block_c(c7: int, name: str) -> InceptionBlock:
  return InceptionBlock(
    (
      (("branch1x1", (192, K1)),),
      _chain("branch7x7_", [(c7, K1), (c7, K17), (192, K71)], "1 2 3"),
      _chain(
        "branch7x7dbl_",
        [(c7, K1), (c7, K71), (c7, K17), (c7, K71), (192, K17)],
        "1 2 3 4 5",
      ),
    ),
    "avg",
    192,
    name=name,
  )


def _block_e(pool: str, name: str) -> InceptionBlock:
  split = ((384, (1, 3)), (384, (3, 1)))
  return InceptionBlock(
    (
      (("branch1x1", (320, K1)),),
      (("branch3x3_1", (384, K1)), ("branch3x3_2a|branch3x3_2b", split)),
      (
        ("branch3x3dbl_1", (448, K1)),
        ("branch3x3dbl_2", (384, K3)),
        ("branch3x3dbl_3a|branch3x3dbl_3b", split),
      ),
    ),
    pool,
    192,
    name=name,
  )


class InceptionV3(nn.Module):
  """InceptionV3 up to the 2048-d global average pool (FID features).

  __call__(images [N, 299, 299, 3] in [-1, 1]) -> [N, 2048].
  """

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = BasicConv(32, K3, 2, "VALID", name="Conv2d_1a_3x3")(x)
    x = BasicConv(32, K3, 1, "VALID", name="Conv2d_2a_3x3")(x)
    x = BasicConv(64, K3, name="Conv2d_2b_3x3")(x)
    x = _pool(x, "max_s2")
    x = BasicConv(80, K1, 1, "VALID", name="Conv2d_3b_1x1")(x)
    x = BasicConv(192, K3, 1, "VALID", name="Conv2d_4a_3x3")(x)
    x = _pool(x, "max_s2")
    x = _block_a(32, name="Mixed_5b")(x)
    x = _block_a(64, name="Mixed_5c")(x)
    x = _block_a(64, name="Mixed_5d")(x)
    x = InceptionBlock(
      (
        (("branch3x3", (384, K3, 2, "VALID")),),
        _chain("branch3x3dbl_", [(64, K1), (96, K3), (96, K3, 2, "VALID")], "1 2 3"),
      ),
      "max_s2",
      name="Mixed_6a",
    )(x)
    for suffix, c7 in (("6b", 128), ("6c", 160), ("6d", 160), ("6e", 192)):
      x = _block_c(c7, name=f"Mixed_{suffix}")(x)
    x = InceptionBlock(
      (
        _chain("branch3x3_", [(192, K1), (320, K3, 2, "VALID")], "1 2"),
        _chain(
          "branch7x7x3_",
          [(192, K1), (192, K17), (192, K71), (192, K3, 2, "VALID")],
          "1 2 3 4",
        ),
      ),
      "max_s2",
      name="Mixed_7a",
    )(x)
    x = _block_e("avg", name="Mixed_7b")(x)
    x = _block_e("max", name="Mixed_7c")(x)
    return x.mean(axis=(1, 2))


# ----------------------------------------------------------------------------
# Weights and features.
# ----------------------------------------------------------------------------


def _shapes() -> dict:
  """Shapes of InceptionV3 {'params', 'batch_stats'} (abstract, no compile)."""
  x = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
  return jax.eval_shape(InceptionV3().init, jax.random.key(0), x)


def random_variables(seed: int = 0) -> dict:
  """Random InceptionV3 variables (He-normal kernels, identity BN) for tests.

  Built in numpy from the abstract shapes: a jitted `init` at 299x299 takes
  about a minute to compile on a CPU.
  """
  rng = np.random.default_rng(seed)

  def fill(path: tuple, leaf: jax.ShapeDtypeStruct) -> np.ndarray:
    name = path[-1].key
    if name == "kernel":
      fan_in = np.prod(leaf.shape[:-1])
      return (rng.standard_normal(leaf.shape) * np.sqrt(2.0 / fan_in)).astype(
        np.float32
      )
    return np.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0, np.float32)

  return jax.tree_util.tree_map_with_path(fill, _shapes())


def save_variables(path: str, variables: dict) -> None:
  """Writes InceptionV3 variables as a Flax msgpack file."""
  with open(path, "wb") as f:
    f.write(flax.serialization.msgpack_serialize(jax.device_get(variables)))


def from_torch_state_dict(state_dict: dict[str, np.ndarray]) -> dict:
  """Converts a torchvision-named InceptionV3 state dict to Flax variables.

  'Mixed_5b.branch1x1.conv.weight' [O, I, kh, kw] -> params kernel
  [kh, kw, I, O]; '*.bn.{weight, bias, running_mean, running_var}' -> params
  scale, bias and batch_stats mean, var. Other keys (fc, AuxLogits) are dropped.
  """
  variables: dict = {"params": {}, "batch_stats": {}}
  renames = {
    "conv.weight": ("params", "conv", "kernel"),
    "bn.weight": ("params", "bn", "scale"),
    "bn.bias": ("params", "bn", "bias"),
    "bn.running_mean": ("batch_stats", "bn", "mean"),
    "bn.running_var": ("batch_stats", "bn", "var"),
  }
  for key, value in state_dict.items():
    parts = key.split(".")
    rule = renames.get(".".join(parts[-2:]))
    if rule is None or parts[0] in ("fc", "AuxLogits"):
      continue
    value = np.asarray(value, np.float32)
    if rule[2] == "kernel":
      value = value.transpose(2, 3, 1, 0)
    node = variables[rule[0]]
    for p in [*parts[:-2], rule[1]]:
      node = node.setdefault(p, {})
    node[rule[2]] = value
  return variables


def load_inception(path: str) -> dict:
  """Reads InceptionV3 variables from a Flax msgpack file, checking shapes."""
  try:
    with open(path, "rb") as f:
      variables = flax.serialization.msgpack_restore(f.read())
  except (OSError, ValueError) as e:
    raise ValueError(f"Cannot read InceptionV3 weights {path!r}: {e}") from e
  want = jax.tree.map(lambda s: s.shape, _shapes())
  if jax.tree.map(np.shape, variables) != want:
    raise ValueError(f"{path!r} does not hold InceptionV3 {{params, batch_stats}}.")
  return variables


@jax.jit
def _features(variables: dict, images: jax.Array) -> jax.Array:
  """uint8 [N, H, W, 3] -> pool features [N, 2048] (bilinear to 299, [-1, 1])."""
  x = images.astype(jnp.float32) / 127.5 - 1.0
  x = jax.image.resize(x, (x.shape[0], INPUT_SIZE, INPUT_SIZE, 3), "bilinear")
  return InceptionV3().apply(variables, x)


def inception_features(
  variables: dict, images: np.ndarray, batch_size: int = 32
) -> np.ndarray:
  """InceptionV3 pool features float64 [N, 2048] of uint8 images [N, H, W, 3]."""
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"images must be [N, H, W, 3]; got shape {images.shape}.")
  return frechet.map_batches(_features, variables, images, batch_size)


def frame_fid(
  variables: dict,
  videos1: np.ndarray,
  videos2: np.ndarray,
  batch_size: int = 32,
) -> float:
  """Frame FID: Fréchet distance of InceptionV3 features of all frames.

  Args:
    variables: InceptionV3 {'params', 'batch_stats'}.
    videos1, videos2: uint8 [N, T, H, W, 3] (N and T may differ between them).
  """
  feats = [
    inception_features(variables, v.reshape(-1, *v.shape[2:]), batch_size)
    for v in (videos1, videos2)
  ]
  return frechet.feature_distance(*feats)
