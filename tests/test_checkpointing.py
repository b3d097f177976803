"""Tests of imagen_video_jax/checkpointing.py on a small hand-made train state."""

import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from imagen_video_jax import checkpointing, config_utils, sharding

STAGE = {"name": "base", "frames": 2, "height": 8, "width": 8}


class FakeIterator:
  """get_state/set_state like the input pipeline's iterator."""

  def __init__(self, position=0):
    self.position = position

  def get_state(self):
    return json.dumps({"next_index": self.position})

  def set_state(self, state):
    if isinstance(state, str):
      state = json.loads(state)
    self.position = state["next_index"]


def make_state(scale: float = 1.0):
  params = {
    "dense": {"kernel": scale * jnp.arange(12.0).reshape(4, 3), "bias": jnp.ones(3)}
  }
  tx = optax.adamw(1e-3)
  return dict(
    step=jnp.array(7, jnp.int32),
    params=params,
    opt_state=tx.init(params),
    ema_params=jax.tree.map(lambda x: 0.5 * x, params),
  )


def abstract_of(state, mesh):
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), state
  )


@pytest.fixture(scope="module")
def mesh():
  return sharding.make_mesh((-1, 1, 1))


def assert_trees_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_save_restore_round_trip_keeps_n_and_data_state(tmp_path, mesh):
  ckpt = checkpointing.Checkpointer(str(tmp_path), stage=STAGE, keep=2)
  state = make_state()
  for step in (1, 2, 3):
    assert ckpt.save(step, state, FakeIterator(position=10 * step))
  ckpt.wait()
  assert sorted(ckpt.manager.all_steps()) == [2, 3]
  # One data state for all processes: a run resumes on any number of hosts.
  data = tmp_path / "checkpoints" / "3" / "data"
  assert [p for p in os.listdir(data) if p.endswith(".json")] == ["data_state.json"]
  iterator = FakeIterator()
  restored, step = ckpt.restore(abstract_of(state, mesh), iterator)
  ckpt.close()
  assert step == 3 and iterator.position == 30
  assert_trees_equal(restored, state)
  assert type(restored["opt_state"][0]) is type(state["opt_state"][0])


def test_data_state_of_one_file_per_process_still_restores(tmp_path, mesh):
  # Checkpoints written before the one file: process i of n wrote its own
  # grain state; each process's next_index was the global batch index.
  with checkpointing.Checkpointer(str(tmp_path), stage=STAGE) as ckpt:
    ckpt.save(4, make_state(), FakeIterator(position=4))
  data = tmp_path / "checkpoints" / "4" / "data"
  os.remove(data / "data_state.json")
  for i in range(2):
    (data / f"process_{i}-of-2.json").write_text(
      json.dumps({"json": json.dumps({"next_index": 4})})
    )
  iterator = FakeIterator()
  with checkpointing.Checkpointer(str(tmp_path), stage=STAGE) as ckpt:
    _, step = ckpt.restore(abstract_of(make_state(), mesh), iterator)
  assert step == 4 and iterator.position == 4


def test_relative_workdir_saves_and_restores(tmp_path, monkeypatch, mesh):
  # Orbax's async save fails in its thread on a relative path; launch/demo.sh
  # passes relative workdirs.
  monkeypatch.chdir(tmp_path)
  ckpt = checkpointing.Checkpointer("runs/base", stage=STAGE)
  state = make_state()
  assert ckpt.save(4, state, FakeIterator(position=3))
  ckpt.close()
  assert os.path.isdir(tmp_path / "runs/base/checkpoints/4")
  ckpt = checkpointing.Checkpointer("runs/base", stage=STAGE)
  restored, step = ckpt.restore(abstract_of(state, mesh), FakeIterator())
  ckpt.close()
  assert step == 4
  assert_trees_equal(restored, state)
  assert_trees_equal(checkpointing.restore_ema_params("runs/base"), state["ema_params"])


def test_close_raises_when_the_last_save_is_missing(tmp_path):
  ckpt = checkpointing.Checkpointer(str(tmp_path), stage=STAGE)
  assert ckpt.save(2, make_state(), FakeIterator())
  ckpt.wait()
  (tmp_path / "checkpoints" / "2").rename(tmp_path / "checkpoints" / "2.lost")
  with pytest.raises(RuntimeError, match=r"checkpoints/2 was not written"):
    ckpt.close()


def test_restore_ema_params_gives_host_arrays(tmp_path):
  ckpt = checkpointing.Checkpointer(str(tmp_path), stage=STAGE)
  state = make_state()
  ckpt.save(5, state, FakeIterator())
  ckpt.close()
  ema = checkpointing.restore_ema_params(str(tmp_path))
  assert isinstance(ema["dense"]["kernel"], np.ndarray)
  assert_trees_equal(ema, state["ema_params"])
  with pytest.raises(ValueError, match="No checkpoints"):
    checkpointing.restore_ema_params(str(tmp_path / "elsewhere"))


def damage(step_dir) -> None:
  """Truncates the largest file of `state` and `ema_params` (a disk fault)."""
  for item in ("state", "ema_params"):
    files = [p for p in glob.glob(f"{step_dir}/{item}/**", recursive=True)]
    largest = max((p for p in files if os.path.isfile(p)), key=os.path.getsize)
    with open(largest, "r+b") as f:
      f.truncate(10)


def test_damaged_latest_is_moved_aside_and_the_run_saves_it_again(tmp_path, mesh):
  ckpt = checkpointing.Checkpointer(str(tmp_path), stage=STAGE, keep=3)
  ckpt.save(1, make_state(1.0), FakeIterator(position=1))
  ckpt.save(2, make_state(2.0), FakeIterator(position=2))
  ckpt.close()
  for attempt in ("2", "2.1"):  # Damaged twice: both kept, neither deleted.
    damage(tmp_path / "checkpoints" / "2")
    with checkpointing.Checkpointer(str(tmp_path), stage=STAGE, keep=3) as ckpt:
      iterator = FakeIterator()
      restored, step = ckpt.restore(abstract_of(make_state(), mesh), iterator)
      assert step == 1 and iterator.position == 1
      assert_trees_equal(restored["params"], make_state(1.0)["params"])
      assert (tmp_path / "damaged_checkpoints" / attempt / "state").is_dir()
      assert ckpt.save(2, make_state(3.0), FakeIterator(position=3))
  restored, step = checkpointing.Checkpointer(str(tmp_path), stage=STAGE).restore(
    abstract_of(make_state(), mesh), FakeIterator()
  )
  assert step == 2
  assert_trees_equal(restored["params"], make_state(3.0)["params"])


def test_every_checkpoint_damaged_is_an_error_that_moves_nothing(tmp_path, mesh):
  with checkpointing.Checkpointer(str(tmp_path), stage=STAGE) as ckpt:
    ckpt.save(1, make_state(), FakeIterator())
  damage(tmp_path / "checkpoints" / "1")
  with (
    pytest.raises(ValueError, match=r"No readable checkpoint among steps \[1\]"),
    checkpointing.Checkpointer(str(tmp_path), stage=STAGE) as ckpt,
  ):
    ckpt.restore(abstract_of(make_state(), mesh), FakeIterator())
  assert (tmp_path / "checkpoints" / "1").is_dir()
  assert not (tmp_path / "damaged_checkpoints").exists()


def test_another_network_is_a_mismatch_not_damage(tmp_path, mesh, caplog):
  with checkpointing.Checkpointer(str(tmp_path), stage=STAGE) as ckpt:
    ckpt.save(1, make_state(), FakeIterator())
  wider = make_state()
  wider["ema_params"]["dense"]["bias"] = jnp.ones(5)
  with (
    pytest.raises(ValueError, match=r"another network.*\['bias'\]: \(3,\) vs \(5,\)"),
    checkpointing.Checkpointer(str(tmp_path), stage=STAGE) as ckpt,
  ):
    ckpt.restore(abstract_of(wider, mesh), FakeIterator())
  assert "damaged" not in caplog.text
  assert os.listdir(tmp_path) == ["checkpoints"]


def test_restore_ema_falls_back_and_checks_the_stage(tmp_path, caplog):
  with checkpointing.Checkpointer(str(tmp_path), stage=STAGE) as ckpt:
    ckpt.save(1, make_state(1.0), FakeIterator())
    ckpt.save(2, make_state(2.0), FakeIterator())
  damage(tmp_path / "checkpoints" / "2")
  with caplog.at_level("WARNING"):
    params, meta = checkpointing.restore_ema(str(tmp_path), stage=STAGE)
  assert meta["step"] == 1 and "newer [2] cannot be read" in caplog.text
  assert_trees_equal(params, make_state(1.0)["ema_params"])
  assert (tmp_path / "checkpoints" / "2").is_dir()  # A reader changes nothing.
  other = dict(STAGE, name="tsr1", frames=4)
  with pytest.raises(ValueError, match=r"checkpoints/\d is from stage.*'base'.*'tsr1'"):
    checkpointing.restore_ema(str(tmp_path), stage=other)


def test_checkpointer_context_waits_for_the_pending_save_on_an_error(tmp_path):
  with (
    pytest.raises(RuntimeError, match="stopping"),
    checkpointing.Checkpointer(str(tmp_path), stage=STAGE) as ckpt,
  ):
    ckpt.save(3, make_state(), FakeIterator())
    raise RuntimeError("stopping")  # As Reporter after max_bad_steps.
  assert os.listdir(tmp_path / "checkpoints") == ["3"]
  assert checkpointing.checkpoint_meta(str(tmp_path))["step"] == 3


def test_non_finite_params_are_never_saved(tmp_path):
  ckpt = checkpointing.Checkpointer(str(tmp_path), stage=STAGE)
  state = make_state()
  state["params"]["dense"]["bias"] = jnp.array([0.0, jnp.nan, 0.0])
  assert not ckpt.save(1, state, FakeIterator())
  ckpt.close()
  assert ckpt.latest_step() is None


def test_checkpoint_from_another_stage_is_refused(tmp_path, mesh):
  ckpt = checkpointing.Checkpointer(str(tmp_path), stage=STAGE)
  ckpt.save(1, make_state(), FakeIterator())
  ckpt.close()
  other = dict(STAGE, name="ssr1", height=16, width=16)
  with pytest.raises(ValueError, match="'base'.*'ssr1'"):
    checkpointing.Checkpointer(str(tmp_path), stage=other).restore(
      abstract_of(make_state(), mesh), FakeIterator()
    )


def test_prepare_workdir_writes_config_and_checks_stage(tmp_path):
  base = config_utils.load_config("configs/base.py:runlocal")
  checkpointing.prepare_workdir(str(tmp_path), base)
  assert "base" in (tmp_path / "config.json").read_text()
  checkpointing.prepare_workdir(str(tmp_path), base)  # Same stage: fine.
  ssr1 = config_utils.load_config("configs/ssr1.py:runlocal")
  with pytest.raises(ValueError, match="'base'.*'ssr1'"):
    checkpointing.prepare_workdir(str(tmp_path), ssr1)


def test_unwritable_workdir_is_named(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  config = config_utils.load_config("configs/base.py:runlocal")
  with pytest.raises(ValueError, match="a_file/run"):
    checkpointing.prepare_workdir(str(blocker / "run"), config)


def test_refused_restart_changes_nothing_and_names_the_keys(tmp_path):
  base = config_utils.load_config("configs/base.py:runlocal")
  checkpointing.prepare_workdir(str(tmp_path), base)
  before = (tmp_path / "config.json").read_bytes()
  wider = config_utils.load_config("configs/base.py:runlocal")
  wider.model.base_channels, wider.text.max_length = 16, 32
  with pytest.raises(
    ValueError,
    match=r"another network.*model.base_channels: 8 -> 16; text.max_length: 48 -> 32",
  ):
    checkpointing.prepare_workdir(str(tmp_path), wider)
  assert (tmp_path / "config.json").read_bytes() == before
  base.dtype, base.remat = "bfloat16", "block"  # No parameter changes: a resume may.
  checkpointing.prepare_workdir(str(tmp_path), base)
  # Older workdirs recorded them under model as well: still the same network.
  saved = json.loads((tmp_path / "config.json").read_text())
  saved["model"].update(dtype="float32", remat="none")
  (tmp_path / "config.json").write_text(json.dumps(saved))
  checkpointing.prepare_workdir(str(tmp_path), base)


def test_a_resume_may_change_the_layout_but_not_the_data_order(tmp_path):
  config = config_utils.load_config("configs/base.py:runlocal")
  checkpointing.prepare_workdir(str(tmp_path), config)
  config.batch_size = 32  # Nothing trained yet: a new start may change it.
  checkpointing.prepare_workdir(str(tmp_path), config)
  with checkpointing.Checkpointer(str(tmp_path), stage=STAGE) as ckpt:
    ckpt.save(1, make_state(), FakeIterator())
  before = (tmp_path / "config.json").read_bytes()
  config.mesh.shape, config.batch_size, config.seed = (2, 2, 2), 16, 1
  with pytest.raises(
    ValueError,
    match=r"another global batch or seed.*batch_size: 32 -> 16; seed: 0 -> 1",
  ):
    checkpointing.prepare_workdir(str(tmp_path), config)
  assert (tmp_path / "config.json").read_bytes() == before
  config.batch_size, config.seed = 32, 0  # Another mesh alone resumes.
  checkpointing.prepare_workdir(str(tmp_path), config)


def test_stage_of_the_checkpoints_is_checked_without_config_json(tmp_path):
  with checkpointing.Checkpointer(str(tmp_path), stage=STAGE) as ckpt:
    ckpt.save(1, make_state(), FakeIterator())
  tsr1 = config_utils.load_config("configs/tsr1.py:runlocal")
  with pytest.raises(
    ValueError, match=r"its checkpoints\) is from stage.*'base'.*'tsr1'"
  ):
    checkpointing.prepare_workdir(str(tmp_path), tsr1)
  assert not (tmp_path / "config.json").exists()
  checkpointing.prepare_workdir(
    str(tmp_path), config_utils.load_config("configs/base.py:runlocal")
  )
