"""Speed and size of every stage's VideoUNet for the demo and runlocal configs.

For each config: parameters, forward and forward+backward milliseconds per
example (median of timed runs after compilation) and the FLOPs of the
compiled programs from XLA's cost analysis, on the local devices.

  python -m imagen_video_jax.benchmarks.models
  python -m imagen_video_jax.benchmarks.models --stages=base,tsr1 --variants=demo
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from configs import common
from imagen_video_jax import config_utils
from imagen_video_jax.models import stage_model

_STAGES = flags.DEFINE_list("stages", list(common.STAGES), "Stages to benchmark.")
_VARIANTS = flags.DEFINE_list("variants", ["demo", "runlocal"], "Config variants.")
_BATCH = flags.DEFINE_integer("batch", 2, "Examples per call.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls (median reported).")


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, list | tuple):  # older jax: one dict per program
    cost = cost[0]
  return float(cost.get("flops", float("nan")))


def _time_ms(fn, args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # warm-up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * float(np.median(times))


def benchmark(spec: str, batch: int = 2, repeats: int = 3) -> dict:
  """Params, ms/example and FLOPs/example of forward and forward+backward."""
  config = config_utils.load_config(spec)
  height, width = config.stage.crop or (config.stage.height, config.stage.width)
  kw = stage_model.dummy_inputs(config, batch=batch, height=height, width=width)
  kw["z"] = jax.random.normal(jax.random.key(0), kw["z"].shape)
  net = stage_model.make_model(config)
  params = jax.jit(lambda kw: net.init(jax.random.key(0), **kw))(kw)["params"]

  def forward(params, kw):
    return net.apply({"params": params}, **kw)

  def loss(params, kw):  # v-MSE-like scalar; only its cost matters here
    return jnp.mean(jnp.square(forward(params, kw) - kw["z"]))

  fwd = jax.jit(forward).lower(params, kw).compile()
  fwd_bwd = jax.jit(jax.value_and_grad(loss)).lower(params, kw).compile()
  return dict(
    params=sum(np.size(x) for x in jax.tree.leaves(params)),
    shape=tuple(kw["z"].shape[1:4]),
    fwd_ms=_time_ms(fwd, (params, kw), repeats) / batch,
    fwd_bwd_ms=_time_ms(fwd_bwd, (params, kw), repeats) / batch,
    fwd_gflops=_flops(fwd) / batch / 1e9,
    fwd_bwd_gflops=_flops(fwd_bwd) / batch / 1e9,
  )


def main(argv):
  del argv
  print(
    f"devices: {jax.devices()[0].device_kind} x{jax.device_count()}, "
    f"batch {_BATCH.value}; ms and GFLOPs per example"
  )
  header = (
    f"{'config':<26} {'T x H x W':>12} {'params':>11} {'fwd ms':>9} "
    f"{'f+b ms':>9} {'fwd GFLOP':>10} {'f+b GFLOP':>10}"
  )
  print(header)
  for variant in _VARIANTS.value:
    for stage in _STAGES.value:
      spec = f"configs/{stage}.py:{variant}"
      r = benchmark(spec, _BATCH.value, _REPEATS.value)
      shape = "x".join(map(str, r["shape"]))
      print(
        f"{spec:<26} {shape:>12} {r['params']:>11,d} {r['fwd_ms']:>9.2f} "
        f"{r['fwd_bwd_ms']:>9.2f} {r['fwd_gflops']:>10.3f} "
        f"{r['fwd_bwd_gflops']:>10.3f}",
        flush=True,
      )


if __name__ == "__main__":
  app.run(main)
