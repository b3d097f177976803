"""Device mesh, logical-axis rules and shardings (t5x / maxdiffusion style).

Every parameter of the models carries logical axis names (`embed`, `heads`,
`mlp`, `conv_out`, ...) through `nn.with_logical_partitioning`; one table of
rules maps them to the mesh axes `data`, `fsdp` and `tensor`, so changing the
parallelism of a run is a config edit (`config.mesh.shape`,
`config.logical_axis_rules`). `jax.jit` with these `NamedSharding`s is what
"pjit" means today.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axes, the one table of the project (t5x style): every
# logical axis the models name, `None` where it stays replicated. A mesh axis is
# used once per array: an activation's channel axis ('embed') gets no `fsdp`
# because its batch already has it. `config.logical_axis_rules` may replace it.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
  # Activations [B, T, H, W, C] and text [B, L, D].
  ("batch", ("data", "fsdp")),
  ("frames", None),
  ("height", None),
  ("width", None),
  ("length", None),
  # Parameters (FSDP shards each large weight on one axis, tensor on another).
  ("embed", "fsdp"),
  ("conv_in", "fsdp"),  # Conv kernels [..., C_in, C_out]: most of a U-Net's weights.
  ("conv_out", "tensor"),
  ("mlp", "tensor"),
  ("heads", "tensor"),
  ("kv", None),
  ("joined_kv", "tensor"),  # T5's fused heads x head_dim.
  ("vocab", "tensor"),
  ("relpos_buckets", None),
)


def mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
  """Resolves a (data, fsdp, tensor) shape with at most one -1 entry.

  Raises:
    ValueError: naming the shape if it has the wrong length, several -1s, or
      does not multiply to `num_devices`.
  """
  shape = tuple(int(s) for s in shape)
  if len(shape) != len(MESH_AXES):
    raise ValueError(f"config.mesh.shape={shape} must have 3 entries {MESH_AXES}.")
  if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ValueError(
      f"config.mesh.shape={shape}: sizes must be positive, at most one may be -1."
    )
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if num_devices % known:
      raise ValueError(
        f"config.mesh.shape={shape} does not divide the {num_devices} devices."
      )
    shape = tuple(num_devices // known if s == -1 else s for s in shape)
  if int(np.prod(shape)) != num_devices:
    raise ValueError(
      f"config.mesh.shape={shape} needs {int(np.prod(shape))} devices, "
      f"but there are {num_devices}."
    )
  return shape


def make_mesh(mesh_config: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The (data, fsdp, tensor) mesh from `config.mesh` (or a shape tuple).

  Axes are `AxisType.Auto` (GSPMD): jax 0.10's `make_mesh` defaults to
  Explicit axes, which logical-axis rules and sharding constraints don't assume.
  """
  shape = getattr(mesh_config, "shape", mesh_config)
  devices = list(devices) if devices is not None else jax.devices()
  shape = mesh_shape(shape, len(devices))
  return jax.make_mesh(
    shape,
    MESH_AXES,
    axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
    devices=devices,
  )


def mesh_from_config(
  config: Any, devices: Sequence[jax.Device] | None = None
) -> tuple[Mesh, tuple[tuple[str, Any], ...]]:
  """A stage config's mesh (over `devices`, default all) and logical-axis rules,
  its batch checked against them.

  Raises:
    ValueError: if config.batch_size does not split over the devices and hosts.
  """
  mesh = make_mesh(config.mesh, devices)
  rules = logical_rules(config.logical_axis_rules)
  check_batch_size(config.batch_size, mesh, rules)
  logging.info("Mesh %s over %d processes.", dict(mesh.shape), jax.process_count())
  return mesh, rules


def under_rules(fn: Callable[..., Any], mesh: Mesh, rules: Any) -> Callable[..., Any]:
  """`fn` traced with `mesh` and the logical-axis rules in effect.

  The models' `nn.with_logical_constraint` calls on activations take effect
  only when traced under both: without rules flax returns the array as it is,
  and without a mesh it drops the constraint. Wrap a function before `jax.jit`
  (a concrete mesh can't be set inside jit, its abstract mesh can).
  """
  rules = logical_rules(rules, mesh.axis_names)

  @functools.wraps(fn)
  def traced(*args, **kwargs):
    with (
      jax.sharding.use_abstract_mesh(mesh.abstract_mesh),
      nn.logical_axis_rules(rules),
    ):
      return fn(*args, **kwargs)

  return traced


def logical_rules(
  rules: Any = None, mesh_axes: Sequence[str] = MESH_AXES
) -> tuple[tuple[str, Any], ...]:
  """Normalises config rules (lists from JSON/ConfigDict) to tuples of pairs,
  each naming only `mesh_axes`."""
  if rules is None:
    return DEFAULT_RULES
  out = []
  for pair in rules:
    if len(pair) != 2:
      raise ValueError(f"Logical axis rule {pair!r} must be (logical, mesh_axes).")
    name, axes = pair
    if isinstance(axes, list | tuple):
      axes = tuple(axes)
      unknown = [a for a in axes if a not in mesh_axes]
    else:
      unknown = [axes] if axes is not None and axes not in mesh_axes else []
    if unknown:
      raise ValueError(
        f"Logical axis rule {pair!r} names mesh axes {unknown} not in "
        f"{tuple(mesh_axes)}."
      )
    out.append((name, axes))
  return tuple(out)


def _axis_size(mesh: Mesh, axes: Any) -> int:
  if axes is None:
    return 1
  if isinstance(axes, str):
    return mesh.shape[axes]
  return int(np.prod([mesh.shape[a] for a in axes]))


def _fit(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
  """Replicates the dimensions whose size the mesh axes don't divide."""
  entries = list(spec) + [None] * (len(shape) - len(spec))
  return PartitionSpec(
    *(a if d % _axis_size(mesh, a) == 0 else None for a, d in zip(entries, shape))
  )


def logical_shardings(abstract_tree: Any, mesh: Mesh, rules: Any = None) -> Any:
  """NamedShardings for a tree of (possibly logically boxed) abstract arrays.

  Args:
    abstract_tree: output of `jax.eval_shape` of an init function; leaves are
      `nn.LogicallyPartitioned` boxes or plain `ShapeDtypeStruct`s (replicated).
    mesh: the device mesh.
    rules: logical axis rules (default `DEFAULT_RULES`).

  Returns:
    A tree shaped like `nn.meta.unbox(abstract_tree)` of `NamedSharding`s. A
    dimension that a mesh axis does not divide evenly is replicated.
  """
  return jax.tree.map(
    lambda spec, x: NamedSharding(mesh, _fit(spec, x.shape, mesh)),
    _mesh_specs(abstract_tree, rules),
    nn.meta.unbox(abstract_tree),
    is_leaf=lambda x: isinstance(x, PartitionSpec),
  )


def _mesh_specs(abstract_tree: Any, rules: Any) -> Any:
  """The rules' PartitionSpec of each leaf (before `_fit`), as a tree."""
  with nn.logical_axis_rules(logical_rules(rules)):
    return nn.logical_to_mesh(nn.get_partition_spec(abstract_tree))


class Undivided(NamedTuple):
  """A parameter that stays whole on every device: the mesh doesn't divide it."""

  path: str  # e.g. "down_0_0/res/conv_0/kernel".
  shape: tuple[int, ...]
  nbytes: int
  spec: PartitionSpec  # What the rules asked for.


def undivided(abstract_tree: Any, mesh: Mesh, rules: Any = None) -> list[Undivided]:
  """The leaves of `abstract_tree` that `logical_shardings` replicates although
  the rules split them, because a mesh axis does not divide their dimension."""
  specs = jax.tree.leaves(
    _mesh_specs(abstract_tree, rules), is_leaf=lambda s: isinstance(s, PartitionSpec)
  )
  shapes = jax.tree_util.tree_leaves_with_path(nn.meta.unbox(abstract_tree))
  found = []
  for (path, x), spec in zip(shapes, specs):
    if _fit(spec, x.shape, mesh) != _fit(spec, [0] * x.ndim, mesh):  # 0: divisible.
      name = jax.tree_util.keystr(path, simple=True, separator="/")
      nbytes = int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
      found.append(Undivided(name, tuple(x.shape), nbytes, spec))
  return found


def _size(nbytes: int) -> str:
  for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
    if nbytes >= scale:
      return f"{nbytes / scale:.2f} {unit}"
  return f"{nbytes} B"


def check_undivided(
  abstract_tree: Any, mesh: Mesh, rules: Any = None, *, error: bool = False
) -> list[Undivided]:
  """Logs (or, with `error`, raises on) every parameter the mesh leaves whole.

  At pod scale a kernel that silently stays replicated is a memory surprise
  (a 1 GB kernel on each of 256 chips), so each one is named with its size.

  Raises:
    ValueError: if `error` (config.mesh.error_on_undivided) and any is found.
  """
  found = undivided(abstract_tree, mesh, rules)
  if not found:
    return found
  total = _size(sum(u.nbytes for u in found))
  lines = [f"{u.path} {u.shape} {_size(u.nbytes)} (rules: {u.spec})" for u in found]
  what = (
    f"{len(found)} parameters ({total}) stay whole on every device: the "
    f"mesh {dict(mesh.shape)} does not divide the dimensions the rules split"
  )
  if error:
    raise ValueError(
      f"{what}: {'; '.join(lines)}. Change config.mesh.shape or the model's "
      "widths, or set config.mesh.error_on_undivided=False to replicate them."
    )
  logging.warning("%s:\n  %s", what, "\n  ".join(lines))
  return found


def abstract_state(
  init_fn: Callable[[jax.Array], Any],
  rng: jax.Array,
  mesh: Mesh,
  rules: Any = None,
  *,
  error_on_undivided: bool = False,
) -> tuple[Any, Any]:
  """Shapes and shardings of `init_fn(rng)` without computing it.

  Args:
    init_fn: rng -> tree of (logically boxed) arrays, e.g. the train state.
    rng: PRNG key for `init_fn`.
    mesh: the device mesh.
    rules: logical axis rules.
    error_on_undivided: raise, rather than log, on a parameter the mesh leaves
      whole (`check_undivided`; the state's "params", whose optimizer moments
      and EMA follow them).

  Returns:
    (abstract, shardings): the unboxed tree of `ShapeDtypeStruct`s carrying
    their shardings (a checkpoint restore target), and the `NamedSharding`s.
  """
  boxed = jax.eval_shape(init_fn, rng)
  params = boxed["params"] if isinstance(boxed, dict) and "params" in boxed else boxed
  check_undivided(params, mesh, rules, error=error_on_undivided)
  shardings = logical_shardings(boxed, mesh, rules)
  abstract = jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
    nn.meta.unbox(boxed),
    shardings,
  )
  return abstract, shardings


def jit_init(init_fn: Callable[[jax.Array], Any], shardings: Any) -> Any:
  """`init_fn` jitted to create its unboxed tree directly in `shardings`."""
  return jax.jit(lambda r: nn.meta.unbox(init_fn(r)), out_shardings=shardings)


def sharded_init(
  init_fn: Callable[[jax.Array], Any], rng: jax.Array, shardings: Any
) -> Any:
  """`init_fn(rng)` unboxed and created directly in `shardings` (jit out_shardings)."""
  return jit_init(init_fn, shardings)(rng)


def batch_axes(mesh: Mesh, rules: Any = None) -> tuple[str, ...]:
  """The mesh axes the logical `batch` axis is split over (from the rules)."""
  for name, axes in logical_rules(rules, mesh.axis_names):
    if name == "batch":
      if axes is None:
        return ()
      return (axes,) if isinstance(axes, str) else tuple(axes)
  return ()


def batch_sharding(mesh: Mesh, rules: Any = None) -> NamedSharding:
  """The one layout of a training batch: its leading dimension over the rules'
  `batch` axes, as the steps' activations use it (the input pipeline, the train
  and distill steps and their benchmarks)."""
  return NamedSharding(mesh, PartitionSpec(batch_axes(mesh, rules) or None))


def check_batch_size(batch_size: int, mesh: Mesh, rules: Any = None) -> None:
  """Raises ValueError unless the global batch splits evenly over the batch axes.

  The number of processes does not matter: each loads the rows its devices
  hold (`host_rows`), whatever the mesh.
  """
  axes = batch_axes(mesh, rules)
  n = _axis_size(mesh, axes)
  if batch_size % n:
    raise ValueError(
      f"config.batch_size={batch_size} is not divisible by the {n} devices of "
      f"the batch's mesh axes {axes} (config.mesh.shape={tuple(mesh.devices.shape)}"
      f", {dict(mesh.shape)})."
    )


def host_rows(num_rows: int, mesh: Mesh, rules: Any = None) -> np.ndarray:
  """The rows of a global batch of `num_rows` that this process's devices hold.

  On any mesh: a data axis smaller or larger than the number of processes,
  FSDP or tensor parallelism across hosts (devices of several hosts holding
  the same rows each load them).

  Returns:
    int64 [R], sorted: indices into the global batch's leading dimension.
  """
  indices = batch_sharding(mesh, rules).addressable_devices_indices_map((num_rows,))
  rows = set()
  for (index,) in indices.values():
    rows.update(range(*index.indices(num_rows)))
  return np.array(sorted(rows), np.int64)


def global_batch(
  local: Any, mesh: Mesh, rules: Any = None, num_rows: int | None = None
) -> Any:
  """This process's rows of a batch -> global arrays in `batch_sharding`.

  Args:
    local: tree of host numpy arrays [R, ...], the rows `host_rows(num_rows)`
      in their order.
    mesh: the device mesh.
    rules: logical axis rules (their `batch` axes).
    num_rows: the global batch's rows; default R (one process holding all).

  Returns:
    The same tree of global `jax.Array`s [num_rows, ...].

  Raises:
    ValueError: if `local` does not hold exactly this process's rows.
  """
  leaves = jax.tree.leaves(local)
  num_rows = len(leaves[0]) if num_rows is None else num_rows
  rows = host_rows(num_rows, mesh, rules)
  where = {int(r): i for i, r in enumerate(rows)}
  for x in leaves:
    if len(x) != len(rows):
      raise ValueError(
        f"Process {jax.process_index()} holds {len(x)} rows of a batch of "
        f"{num_rows}, but its devices hold {len(rows)} of them on mesh "
        f"{dict(mesh.shape)}."
      )
  layout = batch_sharding(mesh, rules)

  def to_global(x):
    x = np.asarray(x)

    def rows_of(index):  # A device's rows: contiguous in the sorted `rows`.
      start, stop, _ = index[0].indices(num_rows)
      return x[where[start] : where[start] + stop - start]

    return jax.make_array_from_callback((num_rows, *x.shape[1:]), layout, rows_of)

  return jax.tree.map(to_global, local)


def wait_for_all_processes(name: str, timeout_s: int = 1800) -> None:
  """Barrier over all processes through the coordination service (no collective).

  Cross-host collectives (gloo on CPU) connect lazily at the first step and
  time out if the hosts arrive far apart, e.g. when one compiles slower.
  """
  if jax.process_count() > 1:
    import orbax.checkpoint as ocp  # Its barrier wraps jax's distributed client.

    ocp.multihost.sync_global_processes(
      name, timeout=timeout_s, processes=set(range(jax.process_count()))
    )


def any_process(flag: bool) -> bool:
  """True when any process says so (e.g. every host stops on a signal together)."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils

  return bool(multihost_utils.process_allgather(np.int32(flag)).max())
