r"""Samples videos from text through a cascade of trained stages.

  python -m imagen_video_jax.sample --config=configs/cascade.py:demo \
    --prompts=prompts.txt --outdir=samples/demo [--num_samples=4] [--seed=0] \
    [--stages=base:tsr1] [--input_video=clip.mp4] [--save_npy] [--overwrite] \
    [--config.stages.base.steps=128]

Reads top to bottom: the prompts, the cascade and its checks, the input video
(all before the output folder is made), each stage's EMA parameters, the text
embeddings (once for all stages), one compiled sampling loop per stage, then
the samples, batch by batch through every stage. Per sample it writes NNNN.mp4
(H.264 at the final stage's fps), NNNN.gif, NNNN.png (contact sheet), with
--save_npy NNNN.npy (uint8 [T, H, W, 3]), and one line of samples.jsonl
(prompt, seed, files, per-stage settings, checkpoint step and seconds: its
batch's wall time per sample; the stages compile before the first batch). Each
stage loads its newest readable checkpoint (a damaged one is logged and the
one before used), after checking the stage its meta records. With --overwrite
the samples go to a hidden folder inside the output folder (OUTDIR/.partial:
its filesystem, so each move is a rename) and replace the previous ones only
once all are written; a run stopped during that swap has the next one finish
it. Sample i uses the PRNG key of seed + i, so `--seed=S+i --num_samples=1`
redraws it alone. The batch is data parallel over a host's devices; on several
hosts (launch/tpu.sh, launch/multihost.sh) host h draws samples h, h + n, ...
into the same folder, and process 0 writes samples.jsonl once all have
finished: the files are those of one host.
"""

import concurrent.futures
import contextlib
import dataclasses
import functools
import os
import time
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
import tqdm
from absl import app, flags, logging

from imagen_video_jax import (
  checkpointing,
  config_utils,
  run_lib,
  video_io,
)
from imagen_video_jax.cascade import inputs, outputs, pipeline, stages
from imagen_video_jax.models import stage_model, text_encoder

_CONFIG = config_utils.define_config_flag("configs/cascade.py:VARIANT")
_PROMPTS = flags.DEFINE_string("prompts", None, "Prompt file: one prompt per line.")
_OUTDIR = flags.DEFINE_string("outdir", None, "Folder the samples are written to.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "Samples per prompt.")
_SEED = flags.DEFINE_integer("seed", None, "Seed of sample 0 (default config.seed).")
_STAGES = flags.DEFINE_string(
  "stages", "", "Stages to run: 'base,tsr1' or a range 'tsr1:ssr1' ('' = all)."
)
_INPUT_VIDEO = flags.DEFINE_string(
  "input_video", "", "A video file the first (SR) stage super-resolves."
)
_SAVE_NPY = flags.DEFINE_bool("save_npy", False, "Also write lossless NNNN.npy.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Reuse an existing outdir.")
_INITIALIZE_PROCESSES = run_lib.define_process_flags()

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_stage_config(spec: str):
  """Loads a stage config spec, relative to the cwd or else to the repository."""
  path, _, arg = spec.partition(":")
  if not os.path.isabs(path) and not os.path.isfile(path):
    path = os.path.join(_REPO, path)
  return config_utils.load_config(f"{path}:{arg}" if arg else path)


def _stage_config(name: str, spec: str, workdir: str) -> ml_collections.ConfigDict:
  """The stage's config, with the network the checkpoint was trained as.

  The cascade names each stage's config; a run started with overrides (say
  `--config.model.base_channels=32`) records its own in WORKDIR/config.json,
  whose model, text and diffusion sections then win. Its stage must be the
  named config's stage.
  """
  config = _load_stage_config(spec)
  saved = checkpointing.saved_config(
    workdir, config, f"Stage {name!r} workdir {workdir!r}"
  )
  if saved is not None:
    # A distill.py workdir's also says for which guidance weights (distill).
    for key in ("model", "text", "diffusion", "distill"):
      # A key newer than the checkpoint keeps its default (the old behaviour).
      merged = config[key].to_dict() | _tuples(saved.get(key, {}))
      config[key] = ml_collections.ConfigDict(merged)
  return config


def _tuples(tree: Any) -> Any:
  """JSON lists back to the tuples configs use (hashable module fields)."""
  if isinstance(tree, dict):
    return {k: _tuples(v) for k, v in tree.items()}
  if isinstance(tree, list):
    return tuple(_tuples(v) for v in tree)
  return tree


@dataclasses.dataclass(frozen=True)
class LoadedCascade:
  """The selected stages, in order, with all sampling needs read from disk."""

  names: tuple[str, ...]
  settings: list[ml_collections.ConfigDict]  # cascade.stages[name] of each.
  workdirs: list[str]
  configs: list[ml_collections.ConfigDict]  # Training configs (checkpoint's model).
  text_config: ml_collections.ConfigDict  # The text encoder all stages share.
  ema: list[Any]  # EMA parameters (host numpy), as saved.
  metas: list[dict[str, Any]]  # Checkpoint metadata (step, sampling_steps, ...).


def load_cascade(
  cascade: ml_collections.ConfigDict, stage_spec: str = "", from_video: bool = False
) -> LoadedCascade:
  """The `--stages` of the cascade, checked to chain, and their EMA parameters.

  Every check (chain, text, augmentation, a stage's checkpoint and its stage
  identity, a distilled student's steps) runs before any parameters go to a
  device, so a mismatched cascade fails in seconds and names the stage.
  """
  names = stages.select_stages(cascade.order, stage_spec)
  settings = [cascade.stages[n] for n in names]
  workdirs = [
    s.workdir
    or os.path.join(cascade.workdir_root, n + ("_distilled" if s.distilled else ""))
    for n, s in zip(names, settings)
  ]
  configs = [
    _stage_config(n, s.config, w) for n, s, w in zip(names, settings, workdirs)
  ]
  stages.check_chain(names, configs, from_video=from_video)
  text_config = stages.check_text(names, configs)
  stages.check_augmentation(names, configs, [s.get("aug_logsnr") for s in settings])
  for name, workdir in zip(names, workdirs):
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(ckpt_dir) or not os.listdir(ckpt_dir):
      raise ValueError(f"Stage {name!r}: no checkpoint in {ckpt_dir!r}.")
  ema, metas = [], []
  for name, workdir, config, s in zip(names, workdirs, configs, settings):
    try:
      params, meta = checkpointing.restore_ema(
        workdir, stage=checkpointing.stage_identity(config)
      )
    except (ValueError, OSError) as e:
      raise ValueError(f"Stage {name!r}: cannot restore {workdir!r}: {e}") from e
    stages.check_student(name, config, s, meta.get("sampling_steps"), workdir)
    ema.append(params)
    metas.append(meta)
  return LoadedCascade(names, settings, workdirs, configs, text_config, ema, metas)


def compile_stages(
  loaded: LoadedCascade,
  variables: list[Any],
  meshes: list[jax.sharding.Mesh],
  text_shapes: tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct],
  first_input: jax.ShapeDtypeStruct | None,
  on_step: Any = None,
) -> list[Any]:
  """One compiled sampling loop per stage: fn(variables, keys, emb, mask, video).

  `meshes` are the stages' (data, frames) meshes. `text_shapes` and
  `first_input` give a batch's text embeddings [B, L, D], mask [B, L] and input
  video [B, T, H, W, 3] (None for a base first stage). The loops are lowered in
  order (each stage's input is the previous one's output), then compiled on
  threads, all at once (XLA compiles off the GIL).
  """
  video = first_input
  lowered = []
  for c, s, v, mesh in zip(loaded.configs, loaded.settings, variables, meshes):
    lowered.append(pipeline.lower_stage(c, s, v, mesh, text_shapes, video, on_step))
    video = lowered[-1].out_info
  with concurrent.futures.ThreadPoolExecutor(len(lowered)) as pool:
    return list(pool.map(lambda low: low.compile(), lowered))


class _Progress:
  """A progress bar per stage run, stepped from inside the compiled loop.

  The stage functions call `on_step` (a `jax.debug.callback`) with each
  sampling step, maybe once per sample and device; `bar` opens the bar of the
  stage run in progress, and steps outside one are ignored.
  """

  def __init__(self) -> None:
    self._bar = None

  def on_step(self, step: Any) -> None:
    done = int(step) + 1
    if self._bar is not None and done > self._bar.n:
      self._bar.update(done - self._bar.n)

  @contextlib.contextmanager
  def bar(self, total: int, desc: str) -> Iterator[None]:
    self._bar = tqdm.tqdm(total=total, desc=desc, leave=False)
    try:
      yield
    finally:
      self._bar.close()
      self._bar = None


def place_stages(
  loaded: LoadedCascade, devices: list[jax.Device]
) -> tuple[list[jax.sharding.Mesh], list[Any]]:
  """Each stage's (data, frames) mesh over `devices`, and its EMA parameters
  as variables in its compute dtype, replicated on every device of the mesh.
  """
  meshes = [
    pipeline.make_mesh(devices, pipeline.frame_shards(n, s, len(devices)))
    for n, s in zip(loaded.names, loaded.settings, strict=True)
  ]
  variables = [
    jax.device_put(
      stage_model.as_variables(stage_model.sampling_params(p, c)),
      jax.NamedSharding(m, jax.P()),
    )
    for p, c, m in zip(loaded.ema, loaded.configs, meshes, strict=True)
  ]
  return meshes, variables


def _run_stages(
  loaded: LoadedCascade,
  order: tuple[str, ...],
  stage_fns: list[Any],
  variables: list[Any],
  meshes: list[jax.sharding.Mesh],
  keys: np.ndarray,
  emb: np.ndarray,
  mask: np.ndarray,
  video: np.ndarray | None,
  progress: _Progress,
  desc: str,
) -> tuple[jax.Array, dict[str, float]]:
  """One batch through every stage: keys [B, 2], emb [B, L, D], mask [B, L],
  the first stage's input [B, T, H, W, 3] or None.

  Returns:
    The last stage's videos [B, T, H, W, 3] in [-1, 1], and each stage's
    wall seconds for the batch.
  """
  seconds = {}
  for s, name in enumerate(loaded.names):
    # On this stage's mesh (a no-op where it is the previous stage's).
    put = functools.partial(
      jax.device_put, device=jax.NamedSharding(meshes[s], jax.P("data"))
    )
    # Keyed by the stage's place in the whole cascade: a stage draws the same
    # noise whichever --stages run it.
    fold = jax.vmap(jax.random.fold_in, (0, None))
    stage_keys = put(np.asarray(fold(keys, order.index(name))))
    emb, mask = put(emb), put(mask)
    video = None if video is None else put(video)
    with progress.bar(loaded.settings[s].steps, f"{name} {desc}"):
      t0 = time.perf_counter()
      video = jax.block_until_ready(
        stage_fns[s](variables[s], stage_keys, emb, mask, video)
      )
      seconds[name] = time.perf_counter() - t0
  return video, seconds


def sample(
  cascade: ml_collections.ConfigDict,
  *,
  prompts_path: str,
  outdir: str,
  num_samples: int = 1,
  seed: int | None = None,
  stage_spec: str = "",
  input_video: str = "",
  save_npy: bool = False,
  overwrite: bool = False,
) -> list[dict]:
  """Samples every prompt `num_samples` times through the cascade (see module
  docstring; the arguments are the flags). Returns this host's samples.jsonl
  records (all of them on one host)."""
  seed = cascade.seed if seed is None else seed
  if num_samples < 1:
    raise ValueError(f"--num_samples={num_samples} must be >= 1.")

  # The inputs, the cascade, then the output folder: nothing is created before
  # all are checked. The prompts and the video's probe (a typo or a damaged
  # file) are cheap, so they go before the checkpoints' restore.
  prompts = inputs.read_prompts(prompts_path)
  if input_video:
    video_io.probe_video(input_video)
  loaded = load_cascade(cascade, stage_spec, from_video=bool(input_video))
  names, configs = loaded.names, loaded.configs
  logging.info("Cascade: %s", " -> ".join(names))
  first_input = None
  if input_video:  # Only the frames the first stage takes, at its size.
    size = stages.input_shape(configs[0]).size
    first_input = inputs.load_input_video(input_video, *size)
  outputs.prepare_outdir(outdir, overwrite)

  # Each stage on a mesh of this host's devices (each host samples on its own).
  meshes, variables = place_stages(loaded, jax.local_devices())
  loaded.ema.clear()  # The host copies (paper scale: tens of GB).

  # Text: encoded once, shared by all stages.
  encoder = text_encoder.TextEncoder.from_config(loaded.text_config)
  inputs.warn_truncated(prompts, encoder.tokenizer)
  text_emb, text_mask = encoder.encode(prompts)
  text_emb, text_mask = np.asarray(text_emb), np.asarray(text_mask)

  # One compiled sampling loop per stage, its batch padded to the device count.
  progress = _Progress()
  batch = inputs.padded_batch(cascade.batch_size, jax.local_device_count())
  text_shapes = tuple(
    jax.ShapeDtypeStruct((batch, *x.shape[1:]), x.dtype) for x in (text_emb, text_mask)
  )
  input_shape = None
  if first_input is not None:
    input_shape = jax.ShapeDtypeStruct((batch, *first_input.shape), first_input.dtype)
  stage_fns = compile_stages(
    loaded, variables, meshes, text_shapes, input_shape, progress.on_step
  )

  # ------------------------------------------------------------------------ #
  # Sampling, batch by batch through every stage; files per sample.
  # ------------------------------------------------------------------------ #
  # Host h of n draws samples h, h + n, ...: sample i is the same video whatever
  # draws it (its key is seed + i), so n hosts write one host's samples.
  jobs = [p for p in range(len(prompts)) for _ in range(num_samples)]
  mine = np.arange(jax.process_index(), len(jobs), jax.process_count())
  records_file = "samples.jsonl"
  if jax.process_count() > 1:  # Merged into samples.jsonl by process 0.
    records_file = f"samples.{jax.process_index()}-of-{jax.process_count()}.jsonl"
  fps = float(configs[-1].stage.fps)
  stage_info = {
    n: dict(s.to_dict(), workdir=w, checkpoint_step=m["step"])
    for n, s, w, m in zip(names, loaded.settings, loaded.workdirs, loaded.metas)
  }
  records = []
  num_batches = -(-len(mine) // batch)
  with outputs.output_folder(outdir) as writedir:
    for b, start in enumerate(range(0, len(mine), batch)):
      real = np.arange(start, start + batch) < len(mine)
      # Padded with copies of this host's last job.
      index = mine[np.minimum(np.arange(start, start + batch), len(mine) - 1)]
      pidx = np.asarray(jobs)[index]
      keys = np.stack(
        [jax.random.key_data(jax.random.key(seed + int(i))) for i in index]
      )
      video = None
      if first_input is not None:
        video = np.broadcast_to(first_input, (batch, *first_input.shape))
      video, seconds = _run_stages(
        loaded,
        tuple(cascade.order),
        stage_fns,
        variables,
        meshes,
        keys,
        text_emb[pidx],
        text_mask[pidx],
        video,
        progress,
        f"{b + 1}/{num_batches}",
      )
      seconds = {n: t / int(real.sum()) for n, t in seconds.items()}  # Per sample.
      out = video_io.to_uint8(jax.device_get(video))
      for row in np.flatnonzero(real):
        i = int(index[row])
        paths = video_io.write_sample(writedir, i, out[row], fps, save_npy=save_npy)
        records.append(
          dict(
            index=i,
            prompt=prompts[jobs[i]],
            seed=seed + i,
            files=paths,
            stages={n: dict(stage_info[n], seconds=seconds[n]) for n in names},
            seconds=sum(seconds.values()),
            **({"input_video": input_video} if input_video else {}),
          )
        )
      outputs.write_jsonl(os.path.join(writedir, records_file), records)
      logging.info("Wrote %d/%d samples to %s", len(records), len(mine), outdir)
  return records


def main(argv: list[str], exits: contextlib.ExitStack) -> None:
  del exits  # Nothing to close: the output folder closes itself.
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  _INITIALIZE_PROCESSES()
  sample(
    _CONFIG.value,
    prompts_path=_PROMPTS.value,
    outdir=_OUTDIR.value,
    num_samples=_NUM_SAMPLES.value,
    seed=_SEED.value,
    stage_spec=_STAGES.value,
    input_video=_INPUT_VIDEO.value,
    save_npy=_SAVE_NPY.value,
    overwrite=_OVERWRITE.value,
  )


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "prompts", "outdir"])
  app.run(run_lib.main_of(main, signals=False))  # Errors as one line, status 1.
