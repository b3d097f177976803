r"""Trains one stage of the Imagen Video cascade (paper Sec. 2.2, Fig. 6).

Each stage (base, tsr1, ssr1, ...) is its own job, steered by its config:

  python -m imagen_video_jax.train --config=configs/ssr1.py:demo \
    --workdir=runs/ssr1 --config.batch_size=8

On a TPU pod every worker runs the same command (launch/tpu.sh); locally,
`launch/multihost.sh` starts several processes that simulate hosts. The script
reads top to bottom: mesh -> workdir (checked, leased) -> text encoder -> model
and sharded state -> train step -> data and restore -> config.json and metric
writer -> loop (metrics, checkpoints, signals).

Exit status: run_lib's contract (README.md#exit-status).
"""

import concurrent.futures
import contextlib

import jax
from absl import app, flags, logging
from clu import parameter_overview, periodic_actions

from imagen_video_jax import (
  checkpointing,
  config_utils,
  input_pipeline,
  programs,
  reporting,
  run_lib,
  sharding,
)

_CONFIG = config_utils.define_config_flag("Stage config, e.g. configs/ssr1.py:demo.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, config and metrics.")
_INITIALIZE_PROCESSES = run_lib.define_process_flags()


def main(argv: list[str], exits: contextlib.ExitStack) -> int:
  del argv
  config, workdir = _CONFIG.value, _WORKDIR.value
  config_utils.check_run_config(config)  # Before anything is written.

  # ------------------------------------------------------------------------ #
  # Processes and the device mesh.
  # ------------------------------------------------------------------------ #
  _INITIALIZE_PROCESSES()
  mesh, rules = sharding.mesh_from_config(config)

  # ------------------------------------------------------------------------ #
  # The workdir, checked and leased: a second run on it is refused here. Its
  # config.json and metrics are written only once the run is known to start.
  # ------------------------------------------------------------------------ #
  lease = run_lib.open_workdir(config, workdir, exits)

  # ------------------------------------------------------------------------ #
  # Frozen text encoder (paper Sec. 2): applied inside the step, or None when
  # the data holds precomputed embeddings.
  # ------------------------------------------------------------------------ #
  text_apply, text_params, text_shardings = programs.frozen_text_encoder(
    config, mesh, rules
  )

  # ------------------------------------------------------------------------ #
  # Model, optimizer, the shapes and shardings of the train state {step,
  # params, opt_state, ema_params} (from the params' logical axes), and the
  # train step jitted with them, traced under the rules, its state donated.
  # ------------------------------------------------------------------------ #
  train_step, init_fn, abstract_state, state_shardings = programs.jit_train_step(
    config, mesh, rules, text_apply, text_shardings
  )
  rng_init = jax.random.key(config.seed)

  # ------------------------------------------------------------------------ #
  # Data, then the init and one step per kind of batch (clips [B,T,...] and
  # images [B*T,1,...] differ in shape) compiled before the first step, on
  # threads (XLA compiles off the GIL), while the latest checkpoint (state,
  # EMA, iterator position) loads.
  # ------------------------------------------------------------------------ #
  train_iter = input_pipeline.create_iterator(config, mesh=mesh)
  ckpt = exits.enter_context(  # Every exit waits for the pending saves.
    checkpointing.Checkpointer(
      workdir, stage=checkpointing.stage_identity(config), keep=config.keep_ckpts
    )
  )
  specs = train_iter.batch_specs()

  def compile_init():
    return sharding.jit_init(init_fn, state_shardings).lower(rng_init).compile()

  with concurrent.futures.ThreadPoolExecutor(len(specs) + 1) as pool:
    fresh = ckpt.latest_step() is None
    init_future = pool.submit(compile_init) if fresh else None
    step_futures = {
      input_pipeline.batch_key(spec): pool.submit(
        lambda s=spec: train_step.lower(abstract_state, s, text_params).compile()
      )
      for spec in specs
    }
    restored = ckpt.restore(abstract_state, train_iter)
    if restored is None:  # Created directly in its shardings, never on one device.
      state = (init_future.result() if init_future else compile_init())(rng_init)
      logging.info("Initialised a new run in %s.", workdir)
    else:
      state, _ = restored
    compiled = {}
    for key, future in step_futures.items():
      executable = future.result()
      compiled[key] = executable, reporting.compiled_flops(executable)
      logging.info("Compiled the step for batch shapes %s.", dict(key))
  sharding.wait_for_all_processes("train_step_compiled")
  step = int(state["step"])
  writer, signals = run_lib.start_writing(config, workdir, exits)
  parameter_overview.log_parameter_overview(
    state["params"], include_stats=False, jax_logging_process=0
  )

  # ------------------------------------------------------------------------ #
  # The loop.
  # ------------------------------------------------------------------------ #
  report = periodic_actions.ReportProgress(
    num_train_steps=config.total_steps, writer=writer, every_steps=config.log_every
  )
  hooks = [report]
  if config.profile_steps and jax.process_index() == 0:
    hooks.append(
      periodic_actions.Profile(logdir=workdir, num_profile_steps=config.profile_steps)
    )
  # `compiled` holds one executable and its FLOPs/step (from the cost
  # analysis) per batch shape.
  reporter = reporting.Reporter(config, writer)
  signals.loop_started()  # From here a signal saves the step first.
  while step < config.total_steps:
    with jax.profiler.StepTraceAnnotation("train", step_num=step):
      batch = next(train_iter)
      executable, flops = compiled[input_pipeline.batch_key(batch)]
      state, metrics = executable(state, batch, text_params)
    step += 1
    for hook in hooks:
      hook(step)
    reporter(step, jax.device_get(metrics), flops)

    stop = signals.stop()
    if step % config.ckpt_every == 0 or step == config.total_steps or stop:
      run_lib.check_lease(lease, step)
      ckpt.save(step, state, train_iter)
    if stop:
      logging.warning("Stopped: saving step %d, exit status %d.", step, signals.status)
      break
  return signals.status


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(run_lib.main_of(main))
