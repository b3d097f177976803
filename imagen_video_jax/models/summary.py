"""Parameter counts of a stage's VideoUNet, per level and in total.

Shapes only, through `jax.eval_shape`: nothing is allocated, so the 5.6B base
model of the paper is counted on a laptop in seconds.

  python -m imagen_video_jax.models.summary --config=configs/base.py:paper
"""

import collections
import re

import jax
import ml_collections
from absl import app, flags

from imagen_video_jax.models import stage_model, video_unet


def param_shapes(config: ml_collections.ConfigDict):
  """The params pytree of jax.ShapeDtypeStruct (logical-axis boxes removed)."""
  model = video_unet.VideoUNet(**config.model)
  side = 2 ** (len(config.model.channel_mult) - 1)
  inputs = stage_model.dummy_inputs(config, frames=2, height=side, width=side)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), **inputs))
  return jax.tree.map(
    lambda x: x.value if hasattr(x, "value") else x,
    variables["params"],
    is_leaf=lambda x: hasattr(x, "value"),
  )


def param_counts(config: ml_collections.ConfigDict) -> dict[str, int]:
  """Parameters per group: 'level_N' (down+up blocks), 'mid', 'other', 'total'."""
  counts = collections.Counter()
  for name, tree in param_shapes(config).items():
    n = sum(x.size for x in jax.tree.leaves(tree))
    match = re.match(r"(down|up)_(\d+)_", name)
    if match:
      counts[f"level_{match.group(2)}"] += n
    elif name.startswith("mid_"):
      counts["mid"] += n
    else:
      counts["other"] += n
  counts["total"] = sum(counts.values())
  return dict(counts)


def summarize(spec: str) -> str:
  """The per-level table for a config spec such as 'configs/base.py:paper'."""
  from imagen_video_jax import config_utils  # noqa: PLC0415

  config = config_utils.load_config(spec)
  counts = param_counts(config)
  m = config.model
  lines = [
    f"VideoUNet of stage {config.stage.name!r} ({spec}), text width {stage_model.text_dim(config)}",
    f"{'':8} {'channels':>8} {'blocks':>6} {'spatial':>7} {'cross':>5} "
    f"{'temporal':>9} {'params':>15}",
  ]
  for level, mult in enumerate(m.channel_mult):
    lines.append(
      f"level {level:<2} {m.base_channels * mult:>8} {m.num_res_blocks[level]:>6} "
      f"{m.spatial_attention[level]!s:>7} {m.cross_attention[level]!s:>5} "
      f"{m.temporal_mixing[level]:>9} {counts.get(f'level_{level}', 0):>15,d}"
    )
  lines.append(f"{'middle':<49} {counts.get('mid', 0):>15,d}")
  lines.append(f"{'embeddings, text pooling, in/out':<49} {counts['other']:>15,d}")
  lines.append(f"{'total':<49} {counts['total']:>15,d}  ({counts['total'] / 1e9:.3f}B)")
  return "\n".join(lines)


def main(argv):
  del argv
  print(summarize(flags.FLAGS.config))


if __name__ == "__main__":
  # Defined here, not at import: this module is also a library, and the
  # binaries that import it (and the tests) define their own --config.
  flags.DEFINE_string("config", None, "Stage config, e.g. configs/base.py:paper")
  flags.mark_flag_as_required("config")
  app.run(main)
