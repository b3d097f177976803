"""What the benchmarks share: a compiled program's memory per chip."""

from typing import Any


def memory_per_chip(compiled: Any) -> dict[str, float]:
  """The compiled program's bytes per chip: argument, temporary, output, total."""
  m = compiled.memory_analysis()
  out = dict(
    argument=float(m.argument_size_in_bytes),
    temporary=float(m.temp_size_in_bytes),
    output=float(m.output_size_in_bytes),
    alias=float(m.alias_size_in_bytes),
  )
  # Donated (aliased) outputs reuse their arguments' buffers.
  out["total"] = out["argument"] + out["temporary"] + out["output"] - out["alias"]
  return out
