"""Parameter counts from eval_shape: the paper's Fig. 6 sizes and the CLI."""

import pytest

from configs import common
from imagen_video_jax import config_utils
from imagen_video_jax.models import stage_model, summary

# Paper Fig. 6: parameters per stage.
PAPER_PARAMS = dict(
  base=5.6e9, tsr1=1.7e9, ssr1=1.4e9, ssr2=1.2e9, tsr2=780e6, tsr3=630e6, ssr3=340e6
)


@pytest.mark.parametrize("stage", common.STAGES)
def test_paper_param_counts_match_fig6(stage):
  config = config_utils.load_config(f"configs/{stage}.py:paper")
  assert stage_model.text_dim(config) == 4096  # T5-XXL width feeds the text layers.
  counts = summary.param_counts(config)
  assert abs(counts["total"] / PAPER_PARAMS[stage] - 1) < 0.05, counts["total"]
  levels = [k for k in counts if k.startswith("level_")]
  assert len(levels) == len(config.model.channel_mult)
  assert sum(v for k, v in counts.items() if k != "total") == counts["total"]


def test_paper_stages_temporal_and_spatial_choices():
  # Fig. 6: temporal attention in the base only; spatial attention in the first
  # four stages; ssr3 has no attention at all (fully convolutional, crops).
  for stage in common.STAGES:
    m = config_utils.load_config(f"configs/{stage}.py:paper").model
    assert set(m.temporal_mixing) == {"attention" if stage == "base" else "conv"}
    assert any(m.spatial_attention) == (stage in ("base", "tsr1", "ssr1", "ssr2"))
    if stage == "ssr3":
      assert not any(m.cross_attention)


def test_summary_table_lists_levels_and_total():
  spec = "configs/tsr2.py:paper"
  out = summary.summarize(spec)
  total = summary.param_counts(config_utils.load_config(spec))["total"]
  assert "level 4" in out and "level 5" not in out
  assert f"{total:,d}" in out.splitlines()[-1]
