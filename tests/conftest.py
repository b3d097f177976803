"""Session-wide fixtures shared by the tests."""

import atexit
import os
import shutil
import tempfile

import pytest

# One persistent XLA compilation cache for the session, the tests' own process
# and every binary they start (which inherit the environment): the same program
# built twice, e.g. one stage's sampling loop in several tests, compiles once.
# A fresh folder each session, so a run measures what CI's clean clone does;
# xdist's workers use the folder of the process that started them.
_SHARED = "IMAGEN_VIDEO_JAX_TEST_XLA_CACHE"
if "PYTEST_XDIST_WORKER" in os.environ and _SHARED in os.environ:
  _CACHE = os.environ[_SHARED]
else:
  _CACHE = tempfile.mkdtemp(prefix="imagen_video_jax_xla_cache_")
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ.update(
  {_SHARED: _CACHE},
  JAX_COMPILATION_CACHE_DIR=_CACHE,
  JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
  JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
)


@pytest.fixture(scope="session")
def compile_cache() -> str:
  """The session's XLA compilation cache folder (binaries started by tests)."""
  return _CACHE


# Examples per split of the tiny bouncing_digits build the training tests read.
TINY_TRAIN_SIZE, TINY_TEST_SIZE = 16, 4


@pytest.fixture(scope="session")
def bouncing_digits_dir(tmp_path_factory) -> str:
  """A TFDS data_dir holding tiny bouncing_digits 'videos' and 'images' (built once)."""
  from imagen_video_jax import data_build

  path = str(tmp_path_factory.mktemp("tfds"))
  for config in ("videos", "images"):
    data_build.build_dataset(
      "bouncing_digits",
      path,
      config=config,
      train_size=TINY_TRAIN_SIZE,
      test_size=TINY_TEST_SIZE,
    )
  return path
