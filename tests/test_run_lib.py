"""Tests of what the training binaries share at their exits (run_lib.main_of, Signals)."""

import os
import signal

import pytest
from test_checkpointing import STAGE, FakeIterator, make_state

from imagen_video_jax import checkpointing, run_lib


def test_an_error_is_one_line_after_the_pending_save_is_written(tmp_path, caplog):
  def binary(argv, exits):
    del argv
    ckpt = exits.enter_context(checkpointing.Checkpointer(str(tmp_path), stage=STAGE))
    ckpt.save(10, make_state(), FakeIterator())
    raise RuntimeError("11 non-finite steps in a row\n(config.max_bad_steps=11)")

  assert run_lib.main_of(binary, signals=False)(["prog"]) == 1
  errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
  assert errors == [
    "RuntimeError: 11 non-finite steps in a row (config.max_bad_steps=11)"
  ]
  assert os.listdir(tmp_path / "checkpoints") == ["10"]  # Not a -tmp folder.


def test_a_bug_keeps_its_traceback():
  def binary(argv, exits):
    raise TypeError("a bug")

  with pytest.raises(TypeError, match="a bug"):
    run_lib.main_of(binary, signals=False)(["prog"])


@pytest.mark.parametrize(
  "signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)]
)
def test_a_signal_in_the_loop_stops_at_the_next_step_with_its_status(signum, status):
  signals = run_lib.Signals()
  before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    signals.install()
    signals.loop_started()
    assert not signals.stop() and signals.status == 0
    os.kill(os.getpid(), signum)  # Handled before the next bytecode.
    assert signals.stop() and signals.status == status
  finally:
    for s, handler in before.items():
      signal.signal(s, handler)
