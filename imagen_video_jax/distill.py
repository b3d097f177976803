r"""Distils one trained stage to a few sampling steps (paper Sec. 2.7, Table 1).

  python -m imagen_video_jax.distill --config=configs/base.py:demo \
    --config.distill.teacher=runs/demo/base --workdir=runs/demo/base_distilled

Phase 1 (guidance distillation, Meng et al., 2022) teaches a student that takes
the guidance weight w as an input the teacher's guided output, in one pass;
phase 2 (halving) halves its sampling steps round by round (Salimans & Ho, 2022)
from `distill.start_sampling_steps` down to `distill.final_sampling_steps`.
The workdir is a stage `sample.py` reads as it is (its config.json says that
the model takes w; each checkpoint's meta, for which step count). The script
reads top to bottom as train.py does: processes -> config and teacher checks ->
mesh -> workdir -> text encoder -> student and sharded state -> one step per
round kind -> data and restore -> loop over the rounds (metrics, checkpoints,
signals). A kill in any round resumes that round at its step and repeats the
uninterrupted run exactly. Exit status: run_lib's contract (README.md#exit-status).
"""

import concurrent.futures
import contextlib
import os

import jax
import numpy as np
from absl import app, flags, logging
from clu import periodic_actions

from imagen_video_jax import (
  checkpointing,
  config_utils,
  distill_lib,
  input_pipeline,
  programs,
  reporting,
  run_lib,
  sharding,
)

_CONFIG = config_utils.define_config_flag("Stage config, e.g. configs/base.py:demo.")
_WORKDIR = flags.DEFINE_string("workdir", None, "The student's workdir.")
_INITIALIZE_PROCESSES = run_lib.define_process_flags()


def main(argv: list[str], exits: contextlib.ExitStack) -> int:
  del argv
  _INITIALIZE_PROCESSES()  # First: reading the teacher starts JAX's backend.

  # ------------------------------------------------------------------------ #
  # The student's config, the teacher, and the workdir's own teacher: all
  # checked before anything is written.
  # ------------------------------------------------------------------------ #
  config, workdir = distill_lib.student_config(_CONFIG.value), _WORKDIR.value
  config_utils.check_run_config(config, optim="distill.optim")
  if os.path.abspath(workdir) == config.distill.teacher:
    raise ValueError(f"--workdir={workdir!r} is the teacher's workdir.")
  resumed_teacher_step = distill_lib.check_resume(workdir, config)
  if resumed_teacher_step is None:  # A start reads the teacher's workdir; a
    teacher_params, config.distill.teacher_step = distill_lib.load_teacher(config)
  else:  # resume, the teacher params each of its own checkpoints holds.
    teacher_params, config.distill.teacher_step = None, resumed_teacher_step
  all_rounds = distill_lib.rounds(config.distill)
  logging.info("Rounds: %s", all_rounds)

  # ------------------------------------------------------------------------ #
  # The device mesh, and the workdir, checked and leased: a second run on it
  # is refused here. Its config.json and metrics are written only once the
  # run is known to start.
  # ------------------------------------------------------------------------ #
  mesh, rules = sharding.mesh_from_config(config)
  lease = run_lib.open_workdir(config, workdir, exits)

  # ------------------------------------------------------------------------ #
  # Frozen text encoder (paper Sec. 2), as train.py's.
  # ------------------------------------------------------------------------ #
  text_apply, text_params, text_shardings = programs.frozen_text_encoder(
    config, mesh, rules
  )

  # ------------------------------------------------------------------------ #
  # The student (the stage's U-Net taking w), the shapes and shardings of the
  # state {step, params, opt_state, ema_params, teacher_params}, the jitted
  # start of a round and one jitted step per round kind (each its own
  # optimizer schedule), traced under the rules, the state donated.
  # ------------------------------------------------------------------------ #
  steps, start_round, init_fn, abstract_state, state_shardings = (
    programs.jit_distill_steps(config, mesh, rules, text_apply, text_shardings)
  )
  rng_init = jax.random.key(config.seed)

  # ------------------------------------------------------------------------ #
  # Data, then the init and the steps of the rounds still to run, for every
  # batch shape, compiled before the first step on threads while the latest
  # checkpoint loads. A fresh run's student starts from the teacher's EMA.
  # ------------------------------------------------------------------------ #
  data_iter = input_pipeline.create_iterator(config, mesh=mesh)
  ckpt = exits.enter_context(  # Every exit waits for the pending saves.
    checkpointing.Checkpointer(
      workdir, stage=checkpointing.stage_identity(config), keep=config.keep_ckpts
    )
  )
  done = ckpt.latest_step() or 0
  kinds = {r.kind for r in all_rounds if r.end > done}
  specs = data_iter.batch_specs()
  scalar = jax.ShapeDtypeStruct((), "int32")

  def compile_init():  # Lowered only for a fresh run.
    return sharding.jit_init(init_fn, state_shardings).lower(rng_init).compile()

  with concurrent.futures.ThreadPoolExecutor(len(specs) * len(kinds) + 1) as pool:
    init_future = pool.submit(compile_init) if not done else None
    step_futures = {
      (kind, input_pipeline.batch_key(spec)): pool.submit(
        lambda k=kind, s=spec: (
          steps[k].lower(abstract_state, s, text_params, scalar, scalar).compile()
        )
      )
      for kind in kinds
      for spec in specs
    }
    restored = ckpt.restore(abstract_state, data_iter)
    if restored is None:  # Round 0 starts from the teacher's EMA params.
      state = (init_future.result() if init_future else compile_init())(rng_init)
      teacher = distill_lib.merge_teacher(
        state["params"], teacher_params, f"Teacher {config.distill.teacher!r}"
      )
      state = start_round(state, jax.device_put(teacher, state_shardings["params"]))
      logging.info("Student initialised from %s.", config.distill.teacher)
    else:
      state, _ = restored
    compiled = {}
    for key, future in step_futures.items():
      executable = future.result()
      compiled[key] = executable, reporting.compiled_flops(executable)
  sharding.wait_for_all_processes("distill_step_compiled")
  step = int(state["step"])
  writer, signals = run_lib.start_writing(config, workdir, exits)
  del teacher_params

  # ------------------------------------------------------------------------ #
  # The loop over the rounds. At a round's first step the previous student's
  # EMA becomes the teacher and the new student, with a fresh optimizer.
  # ------------------------------------------------------------------------ #
  report = periodic_actions.ReportProgress(
    num_train_steps=config.total_steps, writer=writer, every_steps=config.log_every
  )
  reporter = reporting.Reporter(config, writer)
  signals.loop_started()  # From here a signal saves the step first.
  while step < config.total_steps:
    r = distill_lib.round_of(all_rounds, step)
    if step == r.start and r.index > 0:
      state = start_round(state, state["ema_params"])
      logging.info("Round %d (%s, student steps %s) starts.", r.index, r.kind, r.steps)
    with jax.profiler.StepTraceAnnotation("distill", step_num=step):
      batch = next(data_iter)
      executable, flops = compiled[(r.kind, input_pipeline.batch_key(batch))]
      args = np.int32(r.start), np.int32(r.steps or 0)
      state, metrics = executable(state, batch, text_params, *args)
    step += 1
    report(step)
    reporter(step, jax.device_get(metrics), flops)

    stop = signals.stop()
    if step in (r.end, config.total_steps) or step % config.ckpt_every == 0 or stop:
      run_lib.check_lease(lease, step)
      ckpt.save(step, state, data_iter, meta=distill_lib.student_meta(all_rounds, step))
    if stop:
      logging.warning("Stopped: saving step %d, exit status %d.", step, signals.status)
      break
  return signals.status


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(run_lib.main_of(main))
