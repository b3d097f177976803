#!/usr/bin/env bash
# The README's first command. On one CPU: installs into .venv, builds bouncing
# digits, trains the demo cascade (base 8x16x16 -> tsr1 16x16x16 -> ssr1
# 16x32x32), samples 64 test prompts, evaluates (prompt alignment with its
# ground-truth ceiling, FVD) and prints a table. Run it again and every stage
# resumes from its latest checkpoint (a finished stage is skipped).
#   RUN=runs/demo TRAIN_SIZE=4000 NUM_PROMPTS=64 bash launch/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=eval source launch/venv.sh  # The demo needs no test tools.
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}  # A CPU demo (quiet where libtpu is installed).
RUN=${RUN:-runs/demo}
DATA=${DATA:-data/built}
TRAIN_SIZE=${TRAIN_SIZE:-4000}
NUM_PROMPTS=${NUM_PROMPTS:-64}
PY=.venv/bin/python
# One XLA:CPU device runs a step on about one core; a device per core, data
# parallel over the batch, keeps every core busy (~1.5x faster on 2 cores). A
# power of two up to 16, so that it divides the demo's batches.
DEVICES=1
while [ $((DEVICES * 2)) -le "$(nproc)" ] && [ $DEVICES -lt 16 ]; do
  DEVICES=$((DEVICES * 2))
done
USER_XLA_FLAGS=${XLA_FLAGS:-}
export XLA_FLAGS="--xla_force_host_platform_device_count=$DEVICES $USER_XLA_FLAGS"
# XLA:CPU maps its temporaries afresh at every call (~400 MB a base step), and
# the kernel faults them in 4 KB at a time: a fifth of the step's CPU time.
# glibc's malloc then asks for transparent huge pages (no effect where they
# are off, or in glibc < 2.35): the base's step ~10% faster (docs/CPU.md).
export GLIBC_TUNABLES="glibc.malloc.hugetlb=1${GLIBC_TUNABLES:+:$GLIBC_TUNABLES}"
mkdir -p "$RUN"

echo "== 1. Bouncing digits ($TRAIN_SIZE train videos and images) -> $DATA"
for kind in videos images; do
  if [ ! -d "$DATA/bouncing_digits/$kind" ]; then
    $PY -m imagen_video_jax.data_build --dataset=bouncing_digits --config=$kind \
      --data_dir="$DATA" --kwargs="{\"train_size\": $TRAIN_SIZE, \"test_size\": 256}"
  fi
done

train() {  # STAGE DEVICES: trains configs/STAGE.py:demo, its log filtered and tagged.
  XLA_FLAGS="--xla_force_host_platform_device_count=$2 $USER_XLA_FLAGS" \
    $PY -m imagen_video_jax.train --config="configs/$1.py:demo" \
    --workdir="$RUN/$1" --config.data.data_dir="$DATA" --alsologtostderr 2>&1 \
    | { grep --line-buffered -E "\] \[[0-9]+\]|Error|error" || true; } \
    | sed -u "s/^/$1: /"
}
echo "== 2. Training the demo stages (each resumes from its checkpoints)"
train base "$DEVICES"
# tsr1 and ssr1 learn from ground truth, not from the base, so they train side
# by side on half the devices each: their starts and compiles overlap, and a job
# on one device waits on no all-reduce (on 2 cores 8.7 minutes for the pair
# against 10.5 one after the other;
# docs/EXPERIMENTS.md#2026-11-30-tsr1-and-ssr1-side-by-side-one-device-each).
HALF=$((DEVICES > 1 ? DEVICES / 2 : 1))
train tsr1 "$HALF" &
TSR1=$!
train ssr1 "$HALF" &
SSR1=$!
# A failure in either, or Ctrl-C, stops both (a script's background jobs
# ignore Ctrl-C, and bash would wait for them).
trap 'pkill -P "$TSR1,$SSR1" || true' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
wait -n  # Whichever ends first; a failure ends the demo here.
wait -n
trap - EXIT INT TERM

echo "== 3. Sampling $NUM_PROMPTS test prompts through the cascade"
$PY -m imagen_video_jax.demo prompts --out="$RUN/prompts.txt" --num="$NUM_PROMPTS"
$PY -m imagen_video_jax.sample --config="configs/cascade.py:demo,workdir_root=$RUN" \
  --prompts="$RUN/prompts.txt" --outdir="$RUN/samples" --save_npy --overwrite

echo "== 4. Evaluating (alignment against the ground-truth ceiling; FVD)"
$PY -m imagen_video_jax.evaluate --samples="$RUN/samples" \
  --reference=bouncing_digits:test --metrics=alignment,frames,fvd

echo "== Summary"
$PY -m imagen_video_jax.demo report --run="$RUN"
echo "Samples (mp4, gif, contact sheets): $RUN/samples"
