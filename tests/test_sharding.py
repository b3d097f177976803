"""Tests of imagen_video_jax/sharding.py: mesh, logical rules, sharded train step.

Run with XLA_FLAGS=--xla_force_host_platform_device_count=8.
"""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from imagen_video_jax import config_utils, optimizers, programs, sharding, train_lib
from imagen_video_jax.models import stage_model, text_encoder

needs_8 = pytest.mark.skipif(
  jax.device_count() < 8,
  reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=8",
)


@needs_8
def test_make_mesh_resolves_minus_one_with_auto_axes():
  mesh = sharding.make_mesh((-1, 2, 1))
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


@pytest.mark.parametrize(
  "shape, match",
  [
    ((3, -1, 1), "does not divide"),
    ((-1, -1, 1), "at most one"),
    ((2, 2), "3 entries"),
    ((2, 2, 1), "needs 4 devices, but there are 8"),
  ],
)
def test_mesh_shape_rejects_bad_shapes(shape, match):
  with pytest.raises(ValueError, match=match):
    sharding.mesh_shape(shape, 8)


def test_mesh_shape_resolves_minus_one():
  assert sharding.mesh_shape((2, -1, 2), 8) == (2, 2, 2)
  assert sharding.mesh_shape((-1, 1, 1), 1) == (1, 1, 1)


@needs_8
def test_logical_shardings_follow_rules_and_replicate_uneven_dims():
  class Dense(nn.Module):
    @nn.compact
    def __call__(self, x):
      w = self.param(
        "w",
        nn.with_logical_partitioning(nn.initializers.ones, ("embed", "mlp")),
        (4, 6),
      )
      v = self.param(
        "v",
        nn.with_logical_partitioning(nn.initializers.ones, ("embed", "mlp")),
        (4, 3),
      )
      return x @ w, x @ v

  mesh = sharding.make_mesh((2, 2, 2))
  abstract = jax.eval_shape(Dense().init, jax.random.key(0), jnp.ones((1, 4)))
  out = sharding.logical_shardings(abstract, mesh)["params"]
  assert out["w"].spec == P("fsdp", "tensor")
  assert out["v"].spec == P("fsdp", None)  # 3 columns don't split over tensor=2.


@needs_8
def test_parameters_the_mesh_leaves_whole_are_named_with_their_size(caplog):
  class Dense(nn.Module):
    @nn.compact
    def __call__(self, x):
      for name, shape in (("w", (4, 6)), ("v", (4, 3)), ("b", (3,))):
        axes = ("embed", "mlp")[: len(shape)] if name != "b" else (None,)
        self.param(name, nn.with_logical_partitioning(nn.zeros, axes), shape)
      return x

  mesh = sharding.make_mesh((2, 2, 2))

  def init_fn(rng):  # A train state: only its params are reported.
    params = Dense().init(rng, jnp.ones((1, 4)))["params"]
    return {"step": jnp.int32(0), "params": params, "ema_params": params}

  with caplog.at_level("WARNING"):
    _, shardings = sharding.abstract_state(init_fn, jax.random.key(0), mesh)
  assert shardings["params"]["v"].spec == P("fsdp", None)
  # Only v: w divides, and b is replicated by its rules, not by the mesh.
  (record,) = [r for r in caplog.records if "stay whole" in r.getMessage()]
  assert re.search(
    r"1 parameters .* mesh \{'data': 2, 'fsdp': 2, 'tensor': 2\}.*\n"
    r"  v \(4, 3\) 48 B \(rules: P\('fsdp', 'tensor'\)\)$",
    record.getMessage(),
  ), record.getMessage()
  with pytest.raises(
    ValueError, match=r"1 parameters .* v \(4, 3\) .*error_on_undivided=False"
  ):
    sharding.abstract_state(init_fn, jax.random.key(0), mesh, error_on_undivided=True)


@needs_8
def test_batch_size_must_divide_the_batch_axes():
  mesh = sharding.make_mesh((2, 2, 2))
  sharding.check_batch_size(8, mesh)
  with pytest.raises(ValueError, match=r"batch_size=6 .* 4 devices"):
    sharding.check_batch_size(6, mesh)


@needs_8
@pytest.mark.parametrize("shape", [(1, 8, 1), (8, 1, 1), (2, 4, 1), (1, 4, 2)])
def test_a_global_batch_is_laid_out_as_the_steps_use_it(shape):
  # The paper configs' mesh (1, -1, 1) included: a data axis of 1 must not
  # replicate the batch (each chip holds its rows of it).
  mesh = sharding.make_mesh(shape)
  n = 8
  assert list(sharding.host_rows(n, mesh)) == list(range(n))  # One process: all.
  local = {"x": np.arange(n * 3.0).reshape(n, 3), "m": np.arange(n) % 2 == 0}
  batch = sharding.global_batch(local, mesh)
  per_device = n // (shape[0] * shape[1])
  for x in batch.values():
    assert x.shape[0] == n and x.sharding == sharding.batch_sharding(mesh)
    assert {s.data.shape[0] for s in x.addressable_shards} == {per_device}
  np.testing.assert_array_equal(np.asarray(batch["x"]), local["x"])
  np.testing.assert_array_equal(np.asarray(batch["m"]), local["m"])
  with pytest.raises(ValueError, match="holds 4 rows of a batch of 8"):
    sharding.global_batch({"x": local["x"][:4]}, mesh, num_rows=8)


def test_rules_naming_unknown_mesh_axes_are_rejected():
  with pytest.raises(ValueError, match="model"):
    sharding.logical_rules([("embed", "model")])


def one_step_fn(config, mesh):
  """(train step jitted on `mesh`, initial state, text params)."""
  rules = sharding.logical_rules(config.logical_axis_rules)
  model = stage_model.make_model(config)
  tx, lr_fn = optimizers.make_optimizer(config.optim, config.total_steps)
  init_fn = train_lib.make_init_fn(config, model, tx)
  _, shardings = sharding.abstract_state(init_fn, jax.random.key(0), mesh, rules)
  state = sharding.sharded_init(init_fn, jax.random.key(0), shardings)
  encoder = text_encoder.TextEncoder.from_config(config.text)
  replicated = jax.sharding.NamedSharding(mesh, P())
  step = jax.jit(
    train_lib.make_train_step(
      config, model, tx, lr_fn, encoder.apply, sharding.batch_sharding(mesh, rules)
    ),
    out_shardings=(shardings, replicated),
  )
  return step, state, jax.device_put(encoder.params, replicated)


@pytest.mark.slow
@needs_8
def test_one_step_on_2x2x2_mesh_equals_one_device_and_nan_steps_are_skipped():
  config = config_utils.load_config("configs/base.py:runlocal,batch=8")
  config.optim.warmup_steps = 0  # A non-zero learning rate at step 0.
  batch = train_lib.synthetic_batch(config, 8)
  mesh8 = sharding.make_mesh((2, 2, 2))
  step8, state8, text8 = one_step_fn(config, mesh8)
  state8, metrics8 = step8(state8, sharding.global_batch(batch, mesh8), text8)
  specs = [x.sharding.spec for x in jax.tree.leaves(state8["params"])]
  assert any("tensor" in str(s) for s in specs) and any("fsdp" in str(s) for s in specs)
  mesh1 = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  step1, state1, text1 = one_step_fn(config, mesh1)
  init1 = jax.device_get(state1)
  state1, metrics1 = step1(state1, sharding.global_batch(batch, mesh1), text1)
  np.testing.assert_allclose(metrics8["loss"], metrics1["loss"], rtol=1e-5)
  np.testing.assert_allclose(metrics8["grad_norm"], metrics1["grad_norm"], rtol=1e-4)
  params8, params1 = jax.device_get((state8["params"], state1["params"]))
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), params1, init1["params"])
  assert max(jax.tree.leaves(moved)) > 1e-4  # The step did change the params.
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
    params8,
    params1,
  )
  # A NaN in the batch: the step reports it and leaves the state as it was.
  batch["video"][0, 0, 0, 0, 0] = np.nan
  before = jax.device_get(state1)
  after, metrics = step1(state1, sharding.global_batch(batch, mesh1), text1)
  assert not metrics["finite"] and int(after["step"]) == int(before["step"]) + 1
  jax.tree.map(
    np.testing.assert_array_equal,
    {k: before[k] for k in ("params", "opt_state", "ema_params")},
    jax.device_get({k: after[k] for k in ("params", "opt_state", "ema_params")}),
  )


def runlocal_train_step(mesh, rules=None):
  """(train.py's jitted step, its abstract state, batch and text params) on `mesh`."""
  config = config_utils.load_config("configs/base.py:runlocal")
  if rules is not None:
    config.logical_axis_rules = rules
  rules = sharding.logical_rules(config.logical_axis_rules)
  text_apply, text_params, text_shardings = programs.frozen_text_encoder(
    config, mesh, rules, abstract=True
  )
  program = programs.jit_train_step(config, mesh, rules, text_apply, text_shardings)
  batch = train_lib.batch_shapes(
    config, config.batch_size, sharding.batch_sharding(mesh, rules)
  )
  return program, batch, text_params


def per_chip_bytes(tree, per_chip=True):
  return sum(
    np.prod(x.sharding.shard_shape(x.shape) if per_chip else x.shape) * x.dtype.itemsize
    for x in jax.tree.leaves(tree)
  )


@needs_8
def test_fsdp_shards_every_large_weight_conv_kernels_included():
  mesh = sharding.make_mesh((1, 4, 1), jax.devices()[:4])
  program, _, _ = runlocal_train_step(mesh)
  state = program.abstract_state
  for key in ("params", "opt_state", "ema_params"):
    # Only small vectors and kernels whose axes 4 does not divide stay whole.
    assert per_chip_bytes(state[key]) <= 0.27 * per_chip_bytes(state[key], False), key
  kernels = [
    (jax.tree_util.keystr(path), x)
    for path, x in jax.tree_util.tree_flatten_with_path(state["params"])[0]
    if x.ndim >= 4  # Convolutions [..., C_in, C_out].
  ]
  assert len(kernels) > 10
  for name, x in kernels:
    if x.shape[-2] % 4 == 0:
      assert x.sharding.spec[x.ndim - 2] == "fsdp", (name, x.sharding.spec)


@needs_8
def test_model_activations_carry_the_sharding_their_constraints_name():
  # 'frames' on the tensor axis: only the U-Net's own constraints name frames.
  rules = tuple(
    (name, "tensor" if name == "frames" else axes)
    for name, axes in sharding.DEFAULT_RULES
  )
  mesh = sharding.make_mesh((2, 1, 2), jax.devices()[:4])
  program, batch, text_params = runlocal_train_step(mesh, rules)
  text = program.step.lower(program.abstract_state, batch, text_params).as_text()
  video = r'\[\{"data", "fsdp"\}, \{"tensor"\}, \{\}, \{\}, \{\}\]> : tensor<16x2x8x8x'
  assert len(re.findall("sdy.sharding_constraint %\\S+ <@mesh, " + video, text)) > 10
  # The same step traced without the rules (the old defect): flax drops them.
  config = config_utils.load_config("configs/base.py:runlocal")
  model = stage_model.make_model(config)
  tx, lr_fn = optimizers.make_optimizer(config.optim, config.total_steps)
  bare = jax.jit(train_lib.make_train_step(config, model, tx, lr_fn, None))
  config.text.precomputed = True
  batch = train_lib.batch_shapes(
    config, config.batch_size, sharding.batch_sharding(mesh)
  )
  text = bare.lower(program.abstract_state, batch, None).as_text()
  assert not re.findall(video, text)


@pytest.mark.parametrize("stage", ["base", "ssr2"])
def test_the_paper_configs_leave_no_large_parameter_whole_on_a_pod(stage):
  # FSDP over 256 chips (v5p-256, configs' mesh (1, -1, 1)): what the mesh
  # leaves whole is the 3- and 6-channel input/output convolutions, and at
  # ssr2's width of 128 the kernels of its 128-channel levels, 6 MiB in all.
  config = config_utils.load_config(f"configs/{stage}.py:paper")
  mesh = jax.sharding.AbstractMesh((1, 256, 1), sharding.MESH_AXES)
  model = stage_model.make_model(config)
  tx, _ = optimizers.make_optimizer(config.optim, config.total_steps)
  boxed = jax.eval_shape(train_lib.make_init_fn(config, model, tx), jax.random.key(0))
  found = sharding.undivided(boxed["params"], mesh, config.logical_axis_rules)
  assert "conv_in/kernel" in [u.path for u in found]
  assert all(u.nbytes < 2 * 2**20 for u in found), found
  assert sum(u.nbytes for u in found) < 8 * 2**20
