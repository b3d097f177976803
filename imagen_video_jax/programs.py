"""The programs the training binaries jit, and the frozen text encoder.

`frozen_text_encoder` places the frozen T5 by its parameters' logical axes;
`jit_train_step` (train.py's) and `jit_distill_steps` (distill.py's) build the
state's shardings from its abstract init and jit the steps with them, traced
under the mesh and the rules. `benchmarks.compile` and `benchmarks.train` lower
these same programs.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from imagen_video_jax import (
  config_utils,
  distill_lib,
  optimizers,
  sharding,
  train_lib,
)
from imagen_video_jax.models import stage_model, text_encoder


def frozen_text_encoder(
  config: ml_collections.ConfigDict,
  mesh: jax.sharding.Mesh,
  rules: Any,
  *,
  abstract: bool = False,
) -> tuple[Callable[..., jax.Array] | None, Any, Any]:
  """The frozen T5 (paper Sec. 2), its params placed by their logical axes.

  Args:
    config: the stage config (`config.text`, `config.dtype`).
    mesh: the device mesh.
    rules: logical axis rules.
    abstract: params as `jax.ShapeDtypeStruct`s carrying their shardings, no
      weights read or drawn (an ahead-of-time compile, as benchmarks.compile).

  Returns:
    (apply, params, shardings); all None when the data holds precomputed
    embeddings (config.text.precomputed).
  """
  if config.text.precomputed:
    return None, None, None
  config_utils.check_compute(config)
  encoder = None
  if abstract:
    _, model = text_encoder.make_model(config.text, dtype=config.dtype)
  else:
    encoder = text_encoder.TextEncoder.from_config(config.text, dtype=config.dtype)
    model = encoder.model
  ones = jnp.ones((1, 1), jnp.int32)
  abstract, shardings = sharding.abstract_state(
    lambda rng: model.init(rng, ones, ones > 0)["params"],
    jax.random.key(0),
    mesh,
    rules,
    error_on_undivided=config.mesh.error_on_undivided,
  )

  def apply(params: Any, tokens: jax.Array, mask: jax.Array) -> jax.Array:
    return model.apply({"params": params}, tokens, mask)

  if encoder is None:
    return apply, abstract, shardings
  return apply, jax.device_put(encoder.params, shardings), shardings


def _abstract_state(
  config: ml_collections.ConfigDict, init_fn: Callable, mesh: Any, rules: Any
) -> tuple[Any, Any]:
  """The state's ShapeDtypeStructs and shardings, from init_fn(key(config.seed))."""
  return sharding.abstract_state(
    init_fn,
    jax.random.key(config.seed),
    mesh,
    rules,
    error_on_undivided=config.mesh.error_on_undivided,
  )


class TrainStep(NamedTuple):
  """train.py's step jitted for a mesh, and the state it runs on."""

  step: Any  # jit of (state, batch, text_params) -> (state, metrics), state donated.
  init_fn: Callable[[jax.Array], Any]  # rng -> boxed initial state.
  abstract_state: Any  # ShapeDtypeStructs of the state, with their shardings.
  state_shardings: Any  # NamedShardings of the state.


def jit_train_step(
  config: ml_collections.ConfigDict,
  mesh: jax.sharding.Mesh,
  rules: Any,
  text_apply: Callable[..., jax.Array] | None,
  text_shardings: Any,
) -> TrainStep:
  """The stage's train step, jitted with the state's shardings (train.py's).

  The state {step, params, opt_state, ema_params} is placed by the params'
  logical axes; the step is traced under the mesh and the rules so that the
  models' activation constraints take effect, and donates its state.
  """
  model = stage_model.make_model(config)
  tx, lr_fn = optimizers.make_optimizer(config.optim, config.total_steps)
  init_fn = train_lib.make_init_fn(config, model, tx)
  abstract_state, state_shardings = _abstract_state(config, init_fn, mesh, rules)
  step_fn = train_lib.make_train_step(
    config, model, tx, lr_fn, text_apply, sharding.batch_sharding(mesh, rules)
  )  # The batch's layout: the inputs' too (input_pipeline loads it so).
  step = jax.jit(
    sharding.under_rules(step_fn, mesh, rules),
    in_shardings=(
      state_shardings,
      sharding.batch_sharding(mesh, rules),
      text_shardings,
    ),
    out_shardings=(
      state_shardings,
      jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),
    ),
    donate_argnums=(0,),
  )
  return TrainStep(step, init_fn, abstract_state, state_shardings)


class DistillSteps(NamedTuple):
  """distill.py's steps jitted for a mesh, and the state they run on.

  `steps` maps a round kind (distill_lib.KINDS) to the jit of (state, batch,
  text_params, round_start, round_steps) -> (state, metrics); `start_round`
  is the jit of (state, teacher params) -> state. Both donate the state. The
  other fields are TrainStep's.
  """

  steps: dict[str, Any]
  start_round: Any
  init_fn: Callable[[jax.Array], Any]
  abstract_state: Any
  state_shardings: Any


def jit_distill_steps(
  config: ml_collections.ConfigDict,
  mesh: jax.sharding.Mesh,
  rules: Any,
  text_apply: Callable[..., jax.Array] | None,
  text_shardings: Any,
) -> DistillSteps:
  """The student's steps, jitted with the state's shardings (distill.py's).

  `config` is the student's (distill_lib.student_config). The state {step,
  params, opt_state, ema_params, teacher_params} is placed by the params'
  logical axes; each round kind has its own optimizer (the same state, its own
  schedule length). Steps are traced under the mesh and the rules, and donate
  their state.
  """
  model = stage_model.make_model(config)
  txs = {
    "guidance": optimizers.make_optimizer(
      config.distill.optim, max(config.distill.guidance_steps, 1)
    ),
    "halving": optimizers.make_optimizer(
      config.distill.optim, max(config.distill.round_steps, 1)
    ),
  }
  tx = txs["halving"][0]  # Both build the same optimizer state.
  train_init = train_lib.make_init_fn(config, model, tx)

  def init_fn(rng):
    state = train_init(rng)
    return dict(state, teacher_params=state["params"])

  abstract_state, state_shardings = _abstract_state(config, init_fn, mesh, rules)
  start_round = jax.jit(
    distill_lib.make_start_fn(tx),
    in_shardings=(state_shardings, state_shardings["params"]),
    out_shardings=state_shardings,
    donate_argnums=(0,),
  )
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  steps = {
    kind: jax.jit(
      sharding.under_rules(
        distill_lib.make_distill_step(
          config,
          model,
          *txs[kind],
          kind,
          text_apply,
          sharding.batch_sharding(mesh, rules),
        ),
        mesh,
        rules,
      ),
      in_shardings=(
        state_shardings,
        sharding.batch_sharding(mesh, rules),
        text_shardings,
        replicated,
        replicated,
      ),
      out_shardings=(state_shardings, replicated),
      donate_argnums=(0,),
    )
    for kind in distill_lib.KINDS
  }
  return DistillSteps(steps, start_round, init_fn, abstract_state, state_shardings)
