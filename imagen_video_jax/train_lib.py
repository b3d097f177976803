"""The training step of one cascade stage and the pieces it is made of.

`train.py` wires these to the mesh, the data and the checkpoints (with
`programs`' help). Everything here is a pure function of arrays and configs:
the initial state, the conditioning of a batch, the train step (diffusion
loss, text dropout, SR conditioning, clipped AdamW, EMA, skipping of
non-finite steps) and the per-logSNR-bucket loss sums. The network itself is
`models/stage_model.py`'s, the optimizer `optimizers.py`'s. `distill_lib`
builds its steps from the same pieces.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from imagen_video_jax import config_utils
from imagen_video_jax.cascade import conditioning
from imagen_video_jax.diffusion import losses, schedules
from imagen_video_jax.models import stage_model, video_unet

# Edges of the logSNR buckets the loss is reported in (lambda in [-20, 20]).
LOGSNR_BUCKETS = (-20.0, -10.0, -5.0, 0.0, 5.0, 10.0, 20.0)


def ema_update(ema: Any, params: Any, decay: float, step: jax.Array) -> Any:
  """EMA of the parameters: ema <- d * ema + (1 - d) * params.

  The decay warms up as d = min(decay, (1 + step) / (10 + step)) (as in
  TF's ExponentialMovingAverage with num_updates), so that a short run's EMA
  is not dominated by the initial, zero-output network.
  """
  d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  return jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, params)


def sr_conditioning(
  cond_video: jax.Array,
  rng: jax.Array,
  shape: tuple[int, int, int],
  diffusion: ml_collections.ConfigDict,
) -> tuple[jax.Array, jax.Array]:
  """The previous stage's video as an SR stage sees it in training.

  Args:
    cond_video: [B, T', H', W', C] the clip at the input stage's shape.
    rng: PRNG key.
    shape: (T, H, W) of the batch's target videos (T = T' = 1 for images).
    diffusion: config.diffusion (aug_logsnr_min, aug_logsnr_max).

  Returns:
    (z', aug_logsnr): the video upsampled to [B, T, H, W, C] and noised at
    lambda' ~ U[aug_logsnr_min, aug_logsnr_max] per example (paper Sec. 2.5,
    noise conditioning augmentation), and lambda' [B].
  """
  video = conditioning.upsample(cond_video, *shape, diffusion.temporal_upsample)
  rng_level, rng_noise = jax.random.split(rng)
  aug_logsnr = jax.random.uniform(
    rng_level,
    video.shape[:1],
    minval=diffusion.aug_logsnr_min,
    maxval=diffusion.aug_logsnr_max,
  )
  z, _ = conditioning.noise_augment(video, rng_noise, aug_logsnr)
  return z, aug_logsnr


def bucket_sums(loss: jax.Array, logsnr: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Sums and counts of per-example losses [B] per logSNR bucket -> ([K], [K])."""
  edges = jnp.asarray(LOGSNR_BUCKETS)
  index = jnp.clip(jnp.searchsorted(edges, logsnr, side="right") - 1, 0, len(edges) - 2)
  onehot = jax.nn.one_hot(index, len(edges) - 1, dtype=jnp.float32)
  return onehot.T @ loss.astype(jnp.float32), onehot.sum(0)


# --------------------------------------------------------------------------- #
# State and the train step.
# --------------------------------------------------------------------------- #
def make_init_fn(
  config: ml_collections.ConfigDict,
  model: video_unet.VideoUNet,
  tx: optax.GradientTransformation,
) -> Callable[[jax.Array], dict[str, Any]]:
  """rng -> initial train state {step, params, opt_state, ema_params} (boxed)."""
  stage = config_utils.StageShape.of(config.stage)
  height, width = stage.train_hw

  def init_fn(rng: jax.Array) -> dict[str, Any]:
    inputs = stage_model.dummy_inputs(
      config,
      frames=stage.train_frames,
      height=height,
      width=width,
      text_length=config.text.max_length,
    )
    variables = model.init({"params": rng, "dropout": rng}, **inputs)
    params = variables["params"]
    return dict(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=tx.init(params),
      ema_params=params,
    )

  return init_fn


def conditioning_inputs(
  config: ml_collections.ConfigDict,
  batch: dict[str, jax.Array],
  text_apply: Callable[..., jax.Array] | None,
  text_params: Any,
  rng_text: jax.Array,
  rng_cond: jax.Array,
  text_dropout: float,
) -> dict[str, jax.Array]:
  """What the U-Net is conditioned on for a batch: text, mask, is_image, SR video.

  Returns:
    dict(text [B, L, D], mask [B, L], is_image [B]) and, for an SR stage,
    video (the noise-augmented input stage's clip) and aug_logsnr [B]. The text
    is the frozen encoder's output (or the batch's 'text_emb'), dropped to the
    null caption at rate `text_dropout`.
  """
  if text_apply is None:
    text = batch["text_emb"]
  else:  # Frozen T5 (paper Sec. 2): no gradient flows into it.
    text = jax.lax.stop_gradient(
      text_apply(text_params, batch["tokens"], batch["text_mask"])
    )
  text, mask = stage_model.drop_text(text, batch["text_mask"], rng_text, text_dropout)
  cond = dict(text=text, mask=mask, is_image=batch["is_image"])
  if config.stage.input is not None:
    cond["video"], cond["aug_logsnr"] = sr_conditioning(
      batch["cond_video"], rng_cond, batch["video"].shape[1:4], config.diffusion
    )
  return cond


def update_state(
  state: dict[str, Any],
  loss_fn: Callable[[Any], tuple[jax.Array, Any]],
  tx: optax.GradientTransformation,
  *,
  ema_decay: float,
  remat: str,
  ema_step: jax.Array | None = None,
) -> tuple[dict[str, Any], jax.Array, Any, dict[str, jax.Array]]:
  """One optimizer step on `loss_fn(params) -> (loss, aux)`.

  Clipped AdamW, then the EMA, whose decay warms up with `ema_step` (default
  the state's step; a distillation round counts from its own start). A
  non-finite loss, gradient or update leaves params, optimizer state and EMA
  untouched.

  Returns:
    (state with new params, opt_state, ema_params and step + 1; the loss; aux;
    metrics grad_norm and finite).
  """
  if remat == "full":
    loss_fn = jax.checkpoint(loss_fn)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (loss, aux), grads = grad_fn(state["params"])
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  new = dict(
    params=params,
    opt_state=opt_state,
    ema_params=ema_update(
      state["ema_params"],
      params,
      ema_decay,
      state["step"] if ema_step is None else ema_step,
    ),
  )
  grad_norm = optax.global_norm(grads)
  finite = (
    jnp.isfinite(loss)
    & jnp.isfinite(grad_norm)
    & jnp.isfinite(optax.global_norm(updates))
  )
  # NaN/Inf in the loss, gradients or update: the update is not applied.
  new = jax.tree.map(
    lambda n, o: jnp.where(finite, n, o), new, {k: state[k] for k in new}
  )
  new = dict(state, **new, step=state["step"] + 1)
  return new, loss, aux, dict(grad_norm=grad_norm, finite=finite)


def make_train_step(
  config: ml_collections.ConfigDict,
  model: video_unet.VideoUNet,
  tx: optax.GradientTransformation,
  lr_fn: Callable[[jax.Array], jax.Array],
  text_apply: Callable[..., jax.Array] | None = None,
  batch_sharding: jax.sharding.Sharding | None = None,
) -> Callable[..., tuple[dict[str, Any], dict[str, jax.Array]]]:
  """The train step (state, batch, text_params) -> (state, metrics), unjitted.

  Args:
    config: the stage config.
    model: the VideoUNet.
    tx: optimizer; lr_fn its learning-rate schedule (for the report).
    lr_fn: step -> learning rate.
    text_apply: frozen text encoder (params, tokens [B,L], mask [B,L]) ->
      [B,L,D]; None when batches carry precomputed 'text_emb'.
    batch_sharding: sharding constraint of the batch's activations.

  A step's randomness is `fold_in(seed, step)`, so a resumed run repeats the
  uninterrupted one exactly. A non-finite loss, gradient or update leaves
  params, optimizer state and EMA untouched (metrics['finite'] is False).
  """
  diffusion = config.diffusion
  logsnr_fn = schedules.get_logsnr_fn(
    diffusion.schedule, diffusion.logsnr_min, diffusion.logsnr_max
  )

  def train_step(state, batch, text_params):
    if batch_sharding is not None:
      batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
    rng = jax.random.fold_in(jax.random.key(config.seed), state["step"])
    rng_text, rng_cond, rng_loss, rng_dropout = jax.random.split(rng, 4)
    cond = conditioning_inputs(
      config, batch, text_apply, text_params, rng_text, rng_cond, diffusion.text_dropout
    )

    def loss_fn(params):
      def denoise_fn(z, logsnr, c):
        return stage_model.apply(model, params, z, logsnr, c, rng_dropout=rng_dropout)

      loss, logsnr = losses.diffusion_loss(
        denoise_fn,
        batch["video"],
        rng_loss,
        cond,
        logsnr_fn=logsnr_fn,
        parameterization=diffusion.parameterization,
        loss=diffusion.loss,
        t_sampling=diffusion.t_sampling,
        late_loss=diffusion.late_loss,
        late=state["step"] >= diffusion.late_loss_from,
      )
      return loss.mean(), (loss, logsnr)

    new, loss, (per_example, logsnr), metrics = update_state(
      state, loss_fn, tx, ema_decay=config.ema_decay, remat=config.remat
    )
    sums, counts = bucket_sums(per_example, logsnr)
    metrics.update(
      loss=loss, lr=lr_fn(state["step"]), bucket_sums=sums, bucket_counts=counts
    )
    return new, metrics

  return train_step


def batch_shapes(
  config: ml_collections.ConfigDict,
  batch_size: int,
  sharding: jax.sharding.Sharding | None = None,
) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes and dtypes of a clip batch as the input pipeline yields it.

  'video' [B,T,H,W,3] float32 at the training crop, 'is_image' [B] bool,
  'text_mask' [B,L] bool, 'cond_video' at the input stage's shape (scaled as
  a crop scales it) for SR stages, and 'tokens' [B,L] int32 or, when
  config.text.precomputed, 'text_emb' [B,L,D] float32.
  """
  stage = config_utils.StageShape.of(config.stage)
  s_in, length = config_utils.StageShape.of(config.stage.input), config.text.max_length
  (h, w), f32, b = stage.train_hw, jnp.float32, batch_size
  shapes = {
    "video": jax.ShapeDtypeStruct((b, stage.train_frames, h, w, 3), f32),
    "is_image": jax.ShapeDtypeStruct((b,), jnp.bool_),
    "text_mask": jax.ShapeDtypeStruct((b, length), jnp.bool_),
  }
  if s_in is not None:
    scale_h, scale_w = h / stage.height, w / stage.width  # Crops scale the input.
    frames = stage.train_frames * s_in.frames // stage.frames
    shape = (b, frames, round(s_in.height * scale_h), round(s_in.width * scale_w), 3)
    shapes["cond_video"] = jax.ShapeDtypeStruct(shape, f32)
  if config.text.precomputed:
    shapes["text_emb"] = jax.ShapeDtypeStruct(
      (b, length, stage_model.text_dim(config)), f32
    )
  else:
    shapes["tokens"] = jax.ShapeDtypeStruct((b, length), jnp.int32)
  if sharding is not None:  # Specs to lower a step for: sharding.batch_sharding.
    shapes = {
      k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding)
      for k, v in shapes.items()
    }
  return shapes


def synthetic_batch(
  config: ml_collections.ConfigDict, batch_size: int, seed: int = 0
) -> dict[str, Any]:
  """A host-local batch shaped as `batch_shapes`, of random values.

  For benchmarks and tests: videos uniform in [-1, 1], every 4th example an
  image, byte tokens on the first half of the caption length, embeddings
  standard normal.
  """
  rng = np.random.default_rng(seed)
  shapes = batch_shapes(config, batch_size)
  length = config.text.max_length
  batch = {
    k: rng.uniform(-1, 1, shapes[k].shape)
    for k in ("video", "cond_video")
    if k in shapes
  }
  batch["is_image"] = np.arange(batch_size) % 4 == 0
  batch["text_mask"] = np.arange(length)[None, :].repeat(batch_size, 0) < length // 2
  if "text_emb" in shapes:
    batch["text_emb"] = rng.normal(size=shapes["text_emb"].shape)
  else:
    batch["tokens"] = rng.integers(3, 259, (batch_size, length)).astype(np.int32)
  return {
    k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in batch.items()
  }
