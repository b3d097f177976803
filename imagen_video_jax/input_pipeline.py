"""Per-stage training batches: TFDS array_record sources -> grain mixture.

Each stage of the cascade (paper Fig. 6) trains on the same clips seen at its
own frame rate and resolution (paper Sec. 2.6, 3):

  * temporal down-sampling by frame skipping to the stage's fps;
  * antialiased bilinear resizing to the stage's height x width;
  * for super-resolution stages, `cond_video`: the same clip at the previous
    stage's frames (frame skipping) and resolution;
  * an optional random crop, the same for every frame and, scaled, for the
    conditioning input (crop-trained stages such as ssr3);
  * images as single-frame examples [1, H, W, 3] with `is_image=True`, each
    with its own caption (joint video-image training, paper Sec. 2.6);
  * values in [-1, 1]; captions as tokens, or precomputed T5 embeddings.

A batch holds B clips or B * T images of one source. The pipeline is a grain
`MapDataset` (random access, so its state is one index). The global batch at
step s is a function of the seed, s and the batch size alone; each JAX process
loads the rows of it that its own devices hold, and the batches are global
`jax.Array`s laid out as the steps use them (`sharding.batch_sharding`), on any
mesh and any number of hosts. A clip becomes a stage's example in `clips.py`.
"""

import bisect
import dataclasses
import functools
import json
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from google.protobuf import message as protobuf_message

from imagen_video_jax import clips, config_utils, sharding

_VIDEO, _IMAGE = "video", "image"
# The project's TFDS dataset folders (data/NAME), buildable with `tfds build`.
DATASETS = ("bouncing_digits", "video_text_folder", "image_text_folder")


class _EncodedFrames(tfds.decode.Decoder):
  """Leaves a Video feature's frames encoded: [T] bytes, decoded when used."""

  def decode_example(self, serialized_example):
    return serialized_example

  def decode_example_np(self, serialized_example):
    return serialized_example

  def decode_batch_example_np(self, serialized_example):
    return serialized_example


class DataReadError(OSError):
  """A built dataset's file or record cannot be read (damaged, missing).

  An OSError, so that the binaries report it as one line; the message names
  the dataset, split, file and record, and the reader's error is its cause.
  """

  def __reduce__(self) -> tuple:
    # grain's worker processes pickle errors to the main process, and pickling
    # drops `__cause__`: keep it (when it pickles) as state.
    cause = self.__cause__
    try:
      pickle.dumps(cause)
    except Exception:  # noqa: BLE001 - any unpicklable cause is left out.
      cause = None
    return type(self), self.args, {**self.__dict__, "__cause__": cause}


# What the readers raise on a damaged file or record: array_record/Riegeli's
# RuntimeError ('Corrupted Riegeli/records file', a failed open), OSError,
# ValueError, and protobuf's DecodeError for a record that is not an Example.
_READ_ERRORS = (RuntimeError, OSError, ValueError, protobuf_message.DecodeError)


class _NamedRecords:
  """A TFDS data source whose read errors name the dataset, split, file, record.

  TFDS opens a split's array_record files lazily, on the first read of each, so
  a damaged file (a truncated one's footer) and a damaged record (a chunk hash
  mismatch) both fail in `__getitem__`: here, and in grain's threads or worker
  processes, which re-raise in the thread that calls `next`.
  """

  def __init__(self, data: Any, name: str, split: str, info: tfds.core.DatasetInfo):
    self._data, self._name, self._split, self._info = data, name, split, info

  def __len__(self) -> int:
    return len(self._data)

  def __getitem__(self, index: int) -> Any:
    try:
      return self._data[index]
    except _READ_ERRORS as e:
      # The file is looked up only now: the hot path is the bare read.
      cause = " ".join(f"{type(e).__name__}: {e}".split())  # One line.
      raise DataReadError(
        f"Dataset {self._name}:{self._info.version} split {self._split!r}: "
        f"record {index} ({self._where(index)}) cannot be read: {cause}"
      ) from e

  def _where(self, index: int) -> str:
    """'record i of file PATH': which of the split's files holds `index`."""
    files = self._info.splits[self._split].file_instructions
    # A file instruction reads records [skip, skip + take) of its file, and the
    # split's records are the instructions' records in order.
    ends = np.cumsum([f.take for f in files])
    i = bisect.bisect_right(ends.tolist(), index)
    if i == len(files):
      return f"beyond the split's {ends[-1] if len(ends) else 0} records"
    first = int(ends[i - 1]) if i else 0
    return f"record {index - first + files[i].skip} of file {files[i].filename}"


@dataclasses.dataclass(frozen=True)
class Source:
  """An opened TFDS split: `data[i]` is an example dict (see `frames`)."""

  name: str
  kind: str  # 'video' | 'image'
  data: Any
  shape: config_utils.StageShape  # frames=0 for images.
  features: tfds.features.FeaturesDict
  encoded: bool  # Video frames left encoded in `data` (decoded by `frames`).

  def frames(self, example: dict, indices: np.ndarray | None = None) -> np.ndarray:
    """uint8 [T, H, W, 3]: an example's video frames `indices` (all when None)."""
    video = example["video"]
    indices = range(len(video)) if indices is None else indices
    if not self.encoded:
      return np.stack([np.asarray(video[i]) for i in indices])
    decode = self.features["video"].feature.decode_example_np
    return np.stack([np.asarray(decode(video[i])) for i in indices])


def build_command(name: str, data_dir: str) -> str:
  """The commands that build TFDS dataset `name` ('dataset/config')."""
  dataset, _, cfg = name.partition("/")
  return (
    f"tfds build data/{dataset} --config={cfg} --data_dir={data_dir}  (or "
    f"python -m imagen_video_jax.data_build --dataset={dataset} --config={cfg} "
    f"--data_dir={data_dir})"
  )


def open_source(
  name: str,
  data_dir: str,
  split: str,
  source_fps: float | None = None,
  *,
  encoded: bool = False,
) -> Source:
  """Opens split `split` of the built TFDS dataset `name` as a data source.

  With `encoded`, video frames stay encoded until `Source.frames` decodes the
  ones a clip uses. The frame rate comes from the dataset's metadata ('fps'),
  else from `source_fps`. Raises ValueError with the build command when the dataset
  or split has not been built. TFDS opens the split's files at their first read:
  reading a damaged or missing file or record of `data` raises `DataReadError`,
  naming the dataset, split, file and record.
  """
  dataset = name.partition("/")[0]
  if dataset not in DATASETS and not os.path.isdir(os.path.join(data_dir, dataset)):
    raise ValueError(
      f"Unknown dataset {name!r}: neither one of {DATASETS} nor built in {data_dir!r}."
    )
  try:
    builder = tfds.builder(name, data_dir=os.path.expanduser(data_dir))
    features = builder.info.features
    encoded = encoded and "video" in features
    decoders = {"video": _EncodedFrames()} if encoded else None
    data = builder.as_data_source(split, decoders=decoders)
  except (tfds.core.DatasetNotFoundError, AssertionError, KeyError) as e:
    # Its first line: tfds goes on to list every dataset it knows.
    cause = (str(e).strip().splitlines() or [type(e).__name__])[0]
    missing = "" if os.path.isdir(data_dir) else " (no such folder)"
    raise ValueError(
      f"Dataset {name!r} split {split!r} is not built in {data_dir!r}{missing};"
      f" build it with: {build_command(name, data_dir)}. Cause: {cause}"
    ) from e
  if split not in builder.info.splits:
    raise ValueError(
      f"Dataset {name!r} has no split {split!r} (built: "
      f"{sorted(builder.info.splits)}); build it with: "
      f"{build_command(name, data_dir)}"
    )
  if "video" in features:
    t, h, w, _ = features["video"].shape
    kind = _VIDEO
  elif "image" in features:
    (h, w, _), t, kind = features["image"].shape, 0, _IMAGE
  else:
    raise ValueError(f"Dataset {name!r} has neither a 'video' nor an 'image' feature.")
  metadata = builder.info.metadata or {}
  fps = metadata.get("fps") or source_fps
  if kind == _VIDEO and not fps:
    raise ValueError(
      f"Dataset {name!r} has no 'fps' metadata; set config.data.source_fps."
    )
  shape = config_utils.StageShape(t, h, w, float(fps or 0.0))
  data = _NamedRecords(data, name, split, builder.info)
  return Source(name, kind, data, shape, features, encoded)


@jax.jit
def _to_unit(frames: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [-1, 1], on the devices (4x less to transfer)."""
  # Clipped: XLA may divide by multiplying with a rounded reciprocal.
  return jnp.clip(frames.astype(jnp.float32) / 127.5 - 1.0, -1.0, 1.0)


def _text_fields(example: dict, precomputed: bool) -> dict:
  """{'caption': str}, or {'text_emb': [L, D], 'text_mask': [L]} if precomputed."""
  if not precomputed:
    caption = example["caption"]
    return {"caption": caption.decode() if isinstance(caption, bytes) else caption}
  emb = np.asarray(example["text_emb"], np.float32)
  mask = example.get("text_mask")
  mask = np.any(emb != 0, axis=-1) if mask is None else np.asarray(mask, bool)
  return {"text_emb": emb, "text_mask": mask}


def _example(example, rng, *, source, transform, precomputed) -> dict:
  """A source example -> stage example (an image is a one-frame video)."""
  video = source.kind == _VIDEO
  cut = transform.cut(rng, video)
  if video:
    frames = source.frames(example, cut.frames)
  else:
    frames = np.asarray(example["image"])[None]
  out = transform(frames, cut) | _text_fields(example, precomputed)
  return out | {"is_image": np.bool_(source.kind == _IMAGE)}


def _collate(elements: list[dict]) -> dict:
  return {k: np.stack([e[k] for e in elements]) for k in elements[0]}


class _Tokenize(grain.transforms.Map):
  """Batch map: 'caption' strings -> 'tokens' int32 [B,L], 'text_mask' [B,L]."""

  def __init__(self, text_config: ml_collections.ConfigDict):
    from imagen_video_jax.models import tokenizers

    self._tokenizer = tokenizers.make_tokenizer(text_config)

  def map(self, batch: dict) -> dict:
    batch = dict(batch)
    tokens, mask = self._tokenizer.tokenize([str(c) for c in batch.pop("caption")])
    batch["tokens"] = np.asarray(tokens, np.int32)
    batch["text_mask"] = np.asarray(mask, np.bool_)
    return batch


RowsOf = Callable[[int], np.ndarray]  # A batch's row count -> the rows a host loads.


def all_rows(num_rows: int) -> np.ndarray:
  """Every row of a batch: what one process holding all devices loads."""
  return np.arange(num_rows)


def host_batches(
  config: ml_collections.ConfigDict,
  *,
  rows_of: RowsOf = all_rows,
  split: str | None = None,
  seed: int | None = None,
) -> grain.MapDataset:
  """Element i: this host's rows of global batch i, `(num_rows, batch)`.

  The global batch i is a function of (config, split, seed, i) alone (see
  `_host_parts`); `rows_of(num_rows)` says which of its rows this host loads
  (`sharding.host_rows` on a mesh; every row by default).
  """
  parts, weights = _host_parts(config, rows_of, split, seed)
  return _mix(parts, weights)


def _mix(parts: list[grain.MapDataset], weights: list[float]) -> grain.MapDataset:
  return parts[0] if len(parts) == 1 else grain.MapDataset.mix(parts, weights)


@dataclasses.dataclass(frozen=True)
class _Rows:
  """Loads a host's rows of one source's global batches."""

  examples: grain.MapDataset  # The source's examples in their global order.
  num_rows: int  # Rows of a global batch: B clips, or B * T images.
  rows: np.ndarray  # The rows this host loads, sorted.
  tokenize: Any  # _Tokenize, or None with precomputed embeddings.

  def __call__(self, j: int) -> tuple[int, dict]:
    """Global batch j of the source is its examples [j * num_rows, ...)."""
    first = j * self.num_rows
    batch = _collate([self.examples[first + int(r)] for r in self.rows])
    return self.num_rows, self.tokenize.map(batch) if self.tokenize else batch


def _host_parts(
  config: ml_collections.ConfigDict,
  rows_of: RowsOf,
  split: str | None,
  seed: int | None,
) -> tuple[list[grain.MapDataset], list[float]]:
  """One infinite MapDataset of a host's batch rows per mixture source, and its
  weight.

  Each source is one global stream of examples: shuffled with a seed of its
  own, repeated, each example cut and augmented with a key of its index. Its
  global batch j is examples [j * b, (j + 1) * b) with b = config.batch_size
  clips or b * T single images (as many pixels), and `grain.MapDataset.mix`
  picks whole batches by the mixture's weights in a fixed pattern. No number
  of processes or devices enters: every layout of a job sees the same batches.
  """
  data = config.data
  split = split or data.split
  seed = config.seed if seed is None else seed
  if not data.mixture:
    raise ValueError("config.data.mixture is empty.")
  stage = config_utils.StageShape.of(config.stage)
  cond = config_utils.StageShape.of(config.stage.input)
  precomputed = bool(config.text.get("precomputed", False))
  # The 0 keeps the order of runs made before there was one global order (it
  # was the process index); the seeds are the same on every process.
  seeds = np.random.SeedSequence([seed, 0]).generate_state(2 * len(data.mixture))
  tokenize = None if precomputed else _Tokenize(config.text)
  parts, weights = [], []
  for i, (name, weight) in enumerate(sorted(data.mixture.items())):
    if not isinstance(weight, int | float) or weight <= 0:
      raise ValueError(
        f"config.data.mixture[{name!r}] = {weight!r}: weights must be positive."
      )
    if name.count("/") != 1:
      raise ValueError(
        f"Unknown dataset {name!r} in config.data.mixture: expected "
        "'dataset/config', e.g. 'bouncing_digits/videos'."
      )
    source = open_source(
      name, data.data_dir, split, data.get("source_fps"), encoded=True
    )
    if precomputed and "text_emb" not in source.features:
      raise ValueError(
        f"config.text.precomputed is set but {name!r} has no 'text_emb' feature "
        f"(features: {source.features})."
      )
    transform = clips.StageTransform(stage, cond, source.shape)
    num_rows = config.batch_size
    if source.kind == _IMAGE:  # T times as many images: as many pixels.
      num_rows *= stage.train_frames
    examples = grain.MapDataset.source(source.data)
    if data.shuffle:
      examples = examples.shuffle(seed=int(seeds[2 * i]))
    fn = functools.partial(
      _example, source=source, transform=transform, precomputed=precomputed
    )
    examples = examples.repeat().random_map(fn, seed=int(seeds[2 * i + 1]))
    load = _Rows(examples, num_rows, np.asarray(rows_of(num_rows)), tokenize)
    # As many batches as the examples hold: `mix` draws its pattern from the
    # parts' lengths.
    parts.append(grain.MapDataset.range(len(examples) // num_rows).map(load))
    weights.append(float(weight))
  return parts, weights


class BatchIterator(Iterator[dict[str, jax.Array]]):
  """Iterates global batches; `get_state`/`set_state` resume exactly.

  The state is the index of the next global batch, the same on every process:
  a run resumes on another number of hosts, devices or mesh where it stopped.
  """

  def __init__(
    self,
    parts: Sequence[grain.MapDataset],
    weights: Sequence[float],
    mesh: jax.sharding.Mesh,
    rules: Any,
    data: ml_collections.ConfigDict,
  ):
    """Mixes `parts` (one MapDataset of host rows per source) by `weights`."""
    self._mesh, self._rules, self._data = mesh, rules, data
    self._parts = list(parts)
    self._batches = _mix(self._parts, list(weights))
    self._it, self._next = None, 0
    self._start(0)

  def _start(self, index: int) -> None:
    """Reads on from global batch `index` (prefetching threads or workers)."""
    self.close()
    data = self._data
    ds = (self._batches[index:] if index else self._batches).to_iter_dataset(
      grain.ReadOptions(
        num_threads=max(int(data.prefetch), 0),
        prefetch_buffer_size=max(int(data.prefetch), 1),
      )
    )
    if data.worker_count:
      ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=data.worker_count))
    self._it, self._next = iter(ds), index

  def __next__(self) -> dict[str, jax.Array]:
    batch = self._to_global(next(self._it))
    self._next += 1
    return batch

  def _to_global(self, element: tuple[int, dict]) -> dict[str, jax.Array]:
    num_rows, local = element
    batch = sharding.global_batch(local, self._mesh, self._rules, num_rows)
    for key in ("video", "cond_video"):
      if key in batch:
        batch[key] = _to_unit(batch[key])
    return batch

  def batch_specs(self) -> list[dict[str, jax.ShapeDtypeStruct]]:
    """Shape, dtype and sharding of every kind of batch the mixture yields.

    One entry per distinct set of shapes (clip batches [B,T,...] and image
    batches [B*T,1,...] differ), read off each source's first batch, so that
    a train step can be compiled for all of them before the first step.
    """
    specs = {}
    for part in self._parts:
      batch = self._to_global(part[0])
      spec = {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=v.sharding)
        for k, v in batch.items()
      }
      specs.setdefault(batch_key(spec), spec)
    return list(specs.values())

  def close(self) -> None:
    """Stops grain's worker processes (config.data.worker_count > 0)."""
    if hasattr(self._it, "close"):
      self._it.close()

  def get_state(self) -> str:
    """JSON string: restoring it makes the next batch the one after this call."""
    return json.dumps({"next_index": self._next})

  def set_state(self, state: str | bytes | dict) -> None:
    """Resumes at a `get_state` (also a state of grain's own iterator)."""
    if isinstance(state, str | bytes):
      state = json.loads(state)
    if not isinstance(state, dict) or not isinstance(state.get("next_index"), int):
      raise ValueError(f"Data iterator state {state!r} has no 'next_index'.")
    self._start(state["next_index"])


def create_iterator(
  config: ml_collections.ConfigDict,
  *,
  mesh: jax.sharding.Mesh,
  split: str | None = None,
  seed: int | None = None,
) -> BatchIterator:
  """Iterator of global batches laid out as the steps use them
  (`sharding.batch_sharding` under config.logical_axis_rules); this process
  loads only the rows its devices hold.

  Keys (B = config.batch_size; T, H, W = config.stage frames/height/width, or
  the crop's T (stage.crop_frames), H, W; T', H', W' = config.stage.input's,
  scaled by the crop; a batch of images has B * T examples of its own
  captions, with T = T' = 1):
    'video'      f32 [B,T,H,W,3] in [-1, 1]
    'cond_video' f32 [B,T',H',W',3] in [-1, 1] (SR stages only)
    'is_image'   bool [B]
    'tokens' int32 [B,L] and 'text_mask' bool [B,L], or, when
    config.text.precomputed, 'text_emb' f32 [B,L,D] and 'text_mask' bool [B,L].
  """
  rules = sharding.logical_rules(config.logical_axis_rules)
  sharding.check_batch_size(config.batch_size, mesh, rules)

  def rows_of(num_rows: int) -> np.ndarray:
    return sharding.host_rows(num_rows, mesh, rules)

  parts, weights = _host_parts(config, rows_of, split, seed)
  return BatchIterator(parts, weights, mesh, rules, config.data)


def batch_key(batch: dict) -> tuple:
  """A batch's (key, shape) pairs, sorted: one compiled step per distinct key."""
  return tuple(sorted((k, tuple(v.shape)) for k, v in batch.items()))
