"""Session-wide fixtures shared by the tests."""

import pytest

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
