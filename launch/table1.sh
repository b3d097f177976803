#!/usr/bin/env bash
# Paper Table 1 on the demo cascade: (base, SR) steps (256, 128) undistilled,
# (256, 8) with distilled SR stages and (8, 8) fully distilled, each with the
# demo's constant and oscillating guidance on the base; then the table. Needs
# launch/demo.sh and launch/distill_demo.sh first. A row whose folder holds a
# metrics.json is kept, so a rerun only samples what is missing.
#   RUN=runs/demo ROWS="s8_8_constant s8_8_oscillating" bash launch/table1.sh
#   NUM_PROMPTS=256 OUT=runs/demo/table1_256 bash launch/table1.sh  # 256 prompts
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=eval source launch/venv.sh
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}  # A CPU demo (quiet where libtpu is installed).
RUN=${RUN:-runs/demo}
OUT=${OUT:-$RUN/table1}
NUM_PROMPTS=${NUM_PROMPTS:-64}  # Test prompts; the first 64 are launch/demo.sh's.
ROWS=${ROWS:-s256_128_constant s256_8_constant s8_8_constant s256_128_oscillating s256_8_oscillating s8_8_oscillating}
PY=.venv/bin/python
DEVICES=$($PY -c "import os; print(1 << (min(os.cpu_count(), 16).bit_length() - 1))")
export XLA_FLAGS="--xla_force_host_platform_device_count=$DEVICES ${XLA_FLAGS:-}"
PROMPTS=$RUN/prompts.txt
if [ "$NUM_PROMPTS" != 64 ]; then
  PROMPTS=$OUT/prompts.txt
  mkdir -p "$OUT"
  [ -f "$PROMPTS" ] || $PY -m imagen_video_jax.demo prompts --out="$PROMPTS" --num="$NUM_PROMPTS"
fi
UNDISTILLED="--config.stages.base.steps=256 --config.stages.tsr1.steps=128 --config.stages.ssr1.steps=128"
for row in $ROWS; do
  [ -f "$OUT/$row/metrics.json" ] && continue
  guide=${row##*_}
  options="workdir_root=$RUN,oscillating=$([ "$guide" = oscillating ] && echo True || echo False)"
  case $row in
    s256_128_*) flags=$UNDISTILLED ;;
    s256_8_*) options="$options,distilled=sr" flags="--config.stages.base.steps=256" ;;
    s8_8_*) options="$options,distilled=all" flags="" ;;
    *) echo "Unknown row $row" >&2; exit 2 ;;
  esac
  echo "== $row"
  # shellcheck disable=SC2086  # $flags is a list of flags.
  $PY -m imagen_video_jax.sample --config="configs/cascade.py:demo,$options" $flags \
    --prompts="$PROMPTS" --outdir="$OUT/$row" --save_npy --overwrite
  $PY -m imagen_video_jax.evaluate --samples="$OUT/$row" \
    --reference=bouncing_digits:test --metrics=alignment,frames,fvd
done
$PY -m imagen_video_jax.demo table --run="$OUT"
