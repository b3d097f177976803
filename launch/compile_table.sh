#!/usr/bin/env bash
# The paper stages' memory per chip from the TPU compiler (libtpu, no TPU
# needed), one compile at a time, then docs/RESULTS.md's tables. Train rows:
# each paper stage's train step on a v5p-128 slice (64 chips) with FSDP over
# all of them at a global batch of 64. Sample rows: each stage's sampling loop, guidance
# included, on a v5e-8 host (frames split as configs/cascade.py:paper says);
# sample_ssr3_v5p: ssr3's on a v5p-8 host (4 chips of 95 GiB), which holds what
# a v5e-8 host cannot. Text row: the T5-XXL encoder on v5e-8. A row
# whose JSON exists is kept, so a rerun only compiles what is missing. A paper
# compile takes 10-40 min and about 15 GB of RAM on a 2-core CPU.
#   ROWS="train_ssr3 sample_base" bash launch/compile_table.sh
#   OUT=runs/compile TIMEOUT=3600 bash launch/compile_table.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/venv.sh
# The topology's devices come from libtpu's compiler; nothing runs on a TPU.
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
OUT=${OUT:-runs/compile}
TIMEOUT=${TIMEOUT:-2700}  # Seconds per compile.
STAGES="base tsr1 ssr1 ssr2 tsr2 tsr3 ssr3"
DEFAULT_ROWS="text"
for s in $STAGES; do DEFAULT_ROWS="$DEFAULT_ROWS train_$s"; done
for s in $STAGES; do DEFAULT_ROWS="$DEFAULT_ROWS sample_$s"; done
DEFAULT_ROWS="$DEFAULT_ROWS sample_ssr3_v5p"
ROWS=${ROWS:-$DEFAULT_ROWS}
TRAIN="--topology=v5p:4x4x4 --mesh=1,64,1 --batch=64"
SAMPLE="--program=sample --config=configs/cascade.py:paper --topology=v5e:2x4"
mkdir -p "$OUT"
for row in $ROWS; do
  # Files sort in the table's order: text, then train and sample by stage.
  case $row in
    text) n=0 flags="--program=text --config=configs/base.py:paper --topology=v5e:2x4 --mesh=1,8,1" ;;
    train_*) n=1 flags="--config=configs/${row#train_}.py:paper $TRAIN" ;;
    sample_ssr3_v5p) n=3 flags="${SAMPLE/v5e:2x4/v5p:2x2x1} --stage=ssr3" ;;
    sample_*) n=2 flags="$SAMPLE --stage=${row#sample_}" ;;
    *) echo "Unknown row $row" >&2; exit 2 ;;
  esac
  i=$(($(echo " $STAGES " | sed "s/ ${row#*_} .*//" | wc -w)))
  json=$OUT/${n}${i}_$row.json
  [ -f "$json" ] && continue
  echo "== $row ($(date +%H:%M))"
  # shellcheck disable=SC2086  # $flags is a list of flags.
  if ! timeout "$TIMEOUT" .venv/bin/python -m imagen_video_jax.benchmarks.compile \
      $flags --json="$json"; then
    echo "$row: failed or ran past ${TIMEOUT}s" >&2
    rm -f "${TMPDIR:-/tmp}/libtpu_lockfile"  # A killed libtpu process leaves it.
  fi
done
.venv/bin/python -m imagen_video_jax.benchmarks.compile --table="$OUT"
