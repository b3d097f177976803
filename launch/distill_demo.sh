#!/usr/bin/env bash
# Distils the demo's three stages (paper Sec. 2.7) from launch/demo.sh's
# checkpoints, then samples and evaluates the distilled cascade (8 steps a
# stage). Run launch/demo.sh first; run this again and every stage resumes.
#   RUN=runs/demo NUM_PROMPTS=64 bash launch/distill_demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=eval source launch/venv.sh
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}  # A CPU demo (quiet where libtpu is installed).
RUN=${RUN:-runs/demo}
DATA=${DATA:-data/built}
NUM_PROMPTS=${NUM_PROMPTS:-64}
PY=.venv/bin/python
DEVICES=$($PY -c "import os; print(1 << (min(os.cpu_count(), 16).bit_length() - 1))")
USER_XLA_FLAGS=${XLA_FLAGS:-}
export XLA_FLAGS="--xla_force_host_platform_device_count=$DEVICES $USER_XLA_FLAGS"
for stage in base tsr1 ssr1; do
  if [ ! -d "$RUN/$stage/checkpoints" ]; then
    echo "No $RUN/$stage/checkpoints: run launch/demo.sh first." >&2
    exit 1
  fi
done

distill() {  # STAGE DEVICES: distils configs/STAGE.py:demo, its log filtered and tagged.
  XLA_FLAGS="--xla_force_host_platform_device_count=$2 $USER_XLA_FLAGS" \
    $PY -m imagen_video_jax.distill --config="configs/$1.py:demo" \
    --config.distill.teacher="$RUN/$1" --workdir="$RUN/$1_distilled" \
    --config.data.data_dir="$DATA" --alsologtostderr 2>&1 \
    | { grep --line-buffered -E "\] \[[0-9]+\] bad|Round|Error|error" || true; } \
    | sed -u "s/^/$1: /"
}
echo "== 1. Distilling the base (phase 1: guidance distillation; phase 2: halving 64 -> 32 -> 16 -> 8 sampling steps)"
distill base "$DEVICES"
echo "== 2. Distilling tsr1 and ssr1 side by side (unguided: phase 2 only, 32 -> 16 -> 8 sampling steps)"
HALF=$((DEVICES > 1 ? DEVICES / 2 : 1))
distill tsr1 "$HALF" &
TSR1=$!
distill ssr1 "$HALF" &
SSR1=$!
trap 'pkill -P "$TSR1,$SSR1" || true' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
wait -n
wait -n
trap - EXIT INT TERM

echo "== 3. Sampling $NUM_PROMPTS test prompts through the distilled cascade"
if [ ! -f "$RUN/prompts.txt" ]; then
  $PY -m imagen_video_jax.demo prompts --out="$RUN/prompts.txt" --num="$NUM_PROMPTS"
fi
$PY -m imagen_video_jax.sample \
  --config="configs/cascade.py:demo,distilled=all,workdir_root=$RUN" \
  --prompts="$RUN/prompts.txt" --outdir="$RUN/samples_distilled" --save_npy --overwrite
$PY -m imagen_video_jax.evaluate --samples="$RUN/samples_distilled" \
  --reference=bouncing_digits:test --metrics=alignment,frames,fvd
