#!/usr/bin/env bash
# Trains one cascade stage on every worker of a Cloud TPU VM pod (gcloud).
#
#   bash launch/tpu.sh --tpu=NAME --zone=ZONE [--project=PROJECT] \
#     [--create --accelerator=v5p-128 --version=v2-alpha-tpuv5] [--setup] \
#     --stage=base --config=configs/base.py:paper --workdir=gs://BUCKET/base \
#     [-- --config.batch_size=512 --config.mesh.shape='(-1,8,1)' ...]
#
#   --create   creates the TPU VM pod first (gcloud compute tpus tpu-vm create).
#   --setup    copies this checkout to every worker and installs it with
#              pip install -e ".[tpu]" (pinned by launch/constraints.txt).
#   --logs     prints the tail of every worker's log of --stage and exits.
# Training runs detached (nohup) on all workers (--worker=all) with
# --multihost (jax.distributed.initialize() detects the pod); each worker logs
# to ~/imagen-video-jax/logs/<stage>.log. Arguments after `--` are config
# overrides. Re-running the same command resumes from the latest checkpoint
# in --workdir; a preempted (SIGTERM) worker saves before it exits.
set -euo pipefail

tpu="" zone="" project="" accelerator="" version="" stage="" config="" workdir=""
create=0 setup=0 logs=0
while [ $# -gt 0 ]; do
  case "$1" in
    --tpu=*) tpu="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --accelerator=*) accelerator="${1#*=}" ;;
    --version=*) version="${1#*=}" ;;
    --stage=*) stage="${1#*=}" ;;
    --config=*) config="${1#*=}" ;;
    --workdir=*) workdir="${1#*=}" ;;
    --create) create=1 ;;
    --setup) setup=1 ;;
    --logs) logs=1 ;;
    --) shift; break ;;
    *) echo "unknown argument: $1 (see the header of $0)" >&2; exit 2 ;;
  esac
  shift
done
for var in tpu zone stage; do
  if [ -z "${!var}" ]; then echo "--$var is required" >&2; exit 2; fi
done
overrides=("$@")
gcloud_args=(--zone="$zone")
[ -n "$project" ] && gcloud_args+=(--project="$project")
remote_dir='~/imagen-video-jax'
on_all() {
  gcloud compute tpus tpu-vm ssh "$tpu" "${gcloud_args[@]}" --worker=all --command="$1"
}

if [ "$logs" -eq 1 ]; then
  on_all "hostname; tail -n 20 $remote_dir/logs/$stage.log"
  exit 0
fi
for var in config workdir; do
  if [ -z "${!var}" ]; then echo "--$var is required" >&2; exit 2; fi
done

if [ "$create" -eq 1 ]; then
  if [ -z "$accelerator" ] || [ -z "$version" ]; then
    echo "--create needs --accelerator and --version" >&2; exit 2
  fi
  gcloud compute tpus tpu-vm create "$tpu" "${gcloud_args[@]}" \
    --accelerator-type="$accelerator" --version="$version"
fi

if [ "$setup" -eq 1 ]; then
  cd "$(dirname "$0")/.."
  archive=$(mktemp --suffix=.tar.gz)
  tar czf "$archive" --exclude=.venv --exclude=.git --exclude=runs --exclude=data/built .
  gcloud compute tpus tpu-vm scp "$archive" "$tpu":/tmp/imagen-video-jax.tar.gz \
    "${gcloud_args[@]}" --worker=all
  rm -f "$archive"
  on_all "mkdir -p $remote_dir && tar xzf /tmp/imagen-video-jax.tar.gz -C $remote_dir \
    && cd $remote_dir && python3 -m venv .venv \
    && .venv/bin/pip install -q -c launch/constraints.txt -e '.[tpu]'"
fi

quoted=$(printf ' %q' "${overrides[@]+"${overrides[@]}"}")
on_all "cd $remote_dir && mkdir -p logs && nohup .venv/bin/python -m imagen_video_jax.train \
  --multihost --config=$(printf %q "$config") --workdir=$(printf %q "$workdir")$quoted \
  >> logs/$stage.log 2>&1 < /dev/null &"
echo "Started $stage on every worker of $tpu; follow with: $0 --tpu=$tpu --zone=$zone --stage=$stage --logs"
