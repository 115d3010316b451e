#!/usr/bin/env bash
# IEDP training on a Cloud TPU VM slice (single- or multi-host): create the slice if it does
# not exist, put the code on every worker, install, and start iedp_jax.train on all workers at
# once. On TPU, jax.distributed.initialize() finds the other hosts by itself.
#
#   TPU_NAME=iedp-v4 ZONE=us-central2-b PROJECT=my-project ACCELERATOR_TYPE=v4-32 \
#   WORKDIR=gs://my-bucket/runs/ade launch/tpu_pod.sh [--config.a.b=value ...]
#
# Required: TPU_NAME, ZONE, PROJECT, ACCELERATOR_TYPE (v4-32, v5litepod-16, v5p-64, ...),
#           WORKDIR (a gs:// path: every worker writes there; or, with SHARED_WORKDIR=1, a
#           folder mounted on every worker, e.g. by gcsfuse or Filestore).
# Optional: RUNTIME_VERSION  TPU software version (default from ACCELERATOR_TYPE: v4 and older
#                            tpu-ubuntu2204-base, v5e v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5,
#                            v6e v2-alpha-tpuv6e)
#           CONFIG           config file inside the repository, default configs/ade.py
#           EXTRA_ARGS       more --config.* flags, split on whitespace (no quotes inside)
#           REPO_URL         git URL to clone on the workers (REPO_REF: branch/tag/commit);
#                            without it the local working tree (git-tracked and untracked,
#                            non-ignored files) is copied with `gcloud ... scp --recurse`
#           REMOTE_DIR       code folder on the workers, relative to $HOME, default iedp-jax
#           PYTHON_VERSION   Python for the workers' virtual environment (uv), default 3.12
#           SKIP_SETUP=1     skip copy and install (code already in place)
#           SPOT=1           create the slice as Spot VMs
#           DETACH=1         start training under nohup (log: ~/iedp-train.log on each worker)
#                            and return, instead of streaming the output over ssh
#           DRY_RUN=1        print the gcloud commands instead of running them
# Arguments after the script name are passed to iedp_jax.train as well.
set -euo pipefail

prog=tpu_pod.sh
die() { echo "$prog: $*" >&2; exit 1; }

require() {  # require NAME DESCRIPTION
  [[ -n ${!1:-} ]] || die "$1 is not set ($2)."
}
require TPU_NAME "the name of the TPU VM slice to create or reuse"
require ZONE "the zone of the slice, e.g. us-central2-b"
require PROJECT "the Google Cloud project id"
require ACCELERATOR_TYPE "the slice type, e.g. v4-32, v5litepod-16 or v5p-64"
require WORKDIR "a gs://bucket/path that every worker writes checkpoints and logs to"
if [[ $WORKDIR != gs://* && ${SHARED_WORKDIR:-0} != 1 ]]; then
  die "WORKDIR must be a gs:// path that all workers share (or set SHARED_WORKDIR=1 for a folder mounted on every worker), got '$WORKDIR'."
fi

if [[ -z ${RUNTIME_VERSION:-} ]]; then
  case $ACCELERATOR_TYPE in
    v2-* | v3-* | v4-*) RUNTIME_VERSION=tpu-ubuntu2204-base ;;
    v5litepod-* | v5e-*) RUNTIME_VERSION=v2-alpha-tpuv5-lite ;;
    v5p-*) RUNTIME_VERSION=v2-alpha-tpuv5 ;;
    v6e-*) RUNTIME_VERSION=v2-alpha-tpuv6e ;;
    *) die "RUNTIME_VERSION is not set and there is no default for ACCELERATOR_TYPE=$ACCELERATOR_TYPE." ;;
  esac
fi
CONFIG=${CONFIG:-configs/ade.py}
REMOTE_DIR=${REMOTE_DIR:-iedp-jax}
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
dry_run=${DRY_RUN:-0}

extra_args=()
if [[ -n ${EXTRA_ARGS:-} ]]; then
  read -r -a extra_args <<< "$EXTRA_ARGS"
fi
extra_args+=("$@")

# The repository this script belongs to (for the local copy).
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if [[ $dry_run != 1 ]] && ! command -v gcloud > /dev/null; then
  die "gcloud is not on PATH: install the Google Cloud CLI (or set DRY_RUN=1 to print the commands)."
fi

run() {  # Runs a command, or prints it (shell-quoted) when DRY_RUN=1.
  if [[ $dry_run == 1 ]]; then
    printf '%q ' "$@"
    printf '\n'
  else
    echo "+ $*" >&2
    "$@"
  fi
}

where=(--zone="$ZONE" --project="$PROJECT")
on_all_workers() {  # on_all_workers REMOTE_COMMAND: runs it on every worker at once.
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${where[@]}" --worker=all --command="$1"
}

# 1. Create the slice unless it exists.
if [[ $dry_run == 1 ]]; then
  echo "# create the slice if 'describe' fails:"
  run gcloud compute tpus tpu-vm describe "$TPU_NAME" "${where[@]}" --format="value(state)"
  create_needed=1
elif state=$(gcloud compute tpus tpu-vm describe "$TPU_NAME" "${where[@]}" --format="value(state)" 2> /dev/null); then
  echo "$prog: reusing TPU $TPU_NAME (state $state)." >&2
  create_needed=0
else
  create_needed=1
fi
if ((create_needed)); then
  create=(gcloud compute tpus tpu-vm create "$TPU_NAME" "${where[@]}"
          --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION")
  if [[ ${SPOT:-0} == 1 ]]; then create+=(--spot); fi
  run "${create[@]}"
fi

# 2. Code on every worker, 3. install into a virtual environment (uv brings a Python new
# enough for current jax; the TPU images ship Ubuntu 22.04's Python 3.10).
# Remote paths start with a literal $HOME, expanded by the workers' shell.
q_dir="\$HOME/$(printf '%q' "$REMOTE_DIR")"
venv="\$HOME/iedp-venv"
if [[ ${SKIP_SETUP:-0} != 1 ]]; then
  if [[ -n ${REPO_URL:-} ]]; then
    clone="rm -rf $q_dir && git clone --quiet $(printf '%q' "$REPO_URL") $q_dir"
    if [[ -n ${REPO_REF:-} ]]; then
      clone+=" && git -C $q_dir checkout --quiet $(printf '%q' "$REPO_REF")"
    fi
    on_all_workers "$clone"
  else
    if [[ $dry_run == 1 ]]; then
      stage="<copy of the git-tracked and untracked non-ignored files of $repo_root>"
    else
      git -C "$repo_root" rev-parse --is-inside-work-tree > /dev/null 2>&1 \
        || die "$repo_root is not a git checkout: set REPO_URL to clone the code on the workers instead."
      stage_parent=$(mktemp -d)
      trap 'rm -rf "$stage_parent"' EXIT
      stage=$stage_parent/$(basename "$REMOTE_DIR")
      mkdir -p "$stage"
      (cd "$repo_root" && git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do [[ -e $f ]] && printf '%s\0' "$f"; done \
        | tar --null -T - -cf -) | tar -xf - -C "$stage"
    fi
    on_all_workers "rm -rf $q_dir"
    run gcloud compute tpus tpu-vm scp --recurse "$stage" "$TPU_NAME:$REMOTE_DIR" "${where[@]}" --worker=all
  fi
  install="set -e; cd $q_dir"
  install+="; python3 -m pip install --user --quiet --upgrade uv"
  install+="; \$HOME/.local/bin/uv venv --quiet --allow-existing --python $(printf '%q' "$PYTHON_VERSION") $venv"
  install+="; \$HOME/.local/bin/uv pip install --quiet --python $venv/bin/python -e '.[tpu]'"
  on_all_workers "$install"
fi

# 4. Train on all workers at once.
train="$venv/bin/python $(printf '%q ' -m iedp_jax.train --config "$CONFIG" --workdir "$WORKDIR" \
  ${extra_args[@]+"${extra_args[@]}"})"
if [[ ${DETACH:-0} == 1 ]]; then
  on_all_workers "cd $q_dir && nohup $train > \$HOME/iedp-train.log 2>&1 < /dev/null &"
  echo "$prog: started; follow with: gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --project=$PROJECT --worker=0 --command='tail -f ~/iedp-train.log'" >&2
else
  on_all_workers "cd $q_dir && $train"
fi
