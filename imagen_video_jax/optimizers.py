"""The optimizer of a stage from `config.optim`: clipped AdamW and its schedule."""

from typing import Any

import jax
import ml_collections
import optax


def learning_rate_schedule(optim: ml_collections.ConfigDict, total_steps: int):
  """Linear warmup to `optim.learning_rate`, then constant, cosine or WSD.

  'wsd' (warmup-stable-decay) holds the peak and decays linearly to 0 over the
  last `optim.decay_fraction` of `total_steps`: a short run learns at the full
  rate for most of its steps and still ends with small, precise updates.
  """
  peak, warmup = optim.learning_rate, max(int(optim.warmup_steps), 0)
  warm = optax.linear_schedule(0.0, peak, max(warmup, 1))
  if optim.schedule == "constant":
    return optax.join_schedules([warm, optax.constant_schedule(peak)], [warmup])
  if optim.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
      0.0, peak, max(warmup, 1), max(total_steps, warmup + 1)
    )
  if optim.schedule == "wsd":
    fraction = optim.decay_fraction
    if not 0.0 < fraction <= 1.0:
      raise ValueError(
        f"config.optim.decay_fraction={fraction!r}; expected a fraction in (0, 1]."
      )
    decay = max(int(round(fraction * total_steps)), 1)
    start = max(total_steps - decay, warmup)
    return optax.join_schedules(
      [
        warm,
        optax.constant_schedule(peak),
        optax.linear_schedule(peak, 0.0, max(total_steps - start, 1)),
      ],
      [warmup, start],
    )
  raise ValueError(
    f"config.optim.schedule={optim.schedule!r}; expected 'constant', 'cosine' or 'wsd'."
  )


def make_optimizer(
  optim: ml_collections.ConfigDict, total_steps: int
) -> tuple[optax.GradientTransformation, Any]:
  """Global-norm clipping + AdamW (decay on matrices/kernels only); (tx, lr_fn)."""
  if optim.name != "adamw":
    raise ValueError(f"config.optim.name={optim.name!r}; only 'adamw' is supported.")
  lr = learning_rate_schedule(optim, total_steps)
  tx = optax.chain(
    optax.clip_by_global_norm(optim.grad_clip) if optim.grad_clip else optax.identity(),
    optax.adamw(
      lr,
      b1=optim.b1,
      b2=optim.b2,
      weight_decay=optim.weight_decay,
      mask=lambda params: jax.tree.map(lambda p: p.ndim > 1, params),
    ),
  )
  return tx, lr
