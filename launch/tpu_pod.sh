#!/usr/bin/env bash
# IEDP training on a Cloud TPU VM slice (single- or multi-host): create the slice if it does
# not exist, put the code on every worker, install, mount the run's bucket with gcsfuse on
# every worker, and start iedp_jax.train on all workers at once. On TPU,
# jax.distributed.initialize() finds the other hosts by itself.
#
#   TPU_NAME=iedp-v4 ZONE=us-central2-b PROJECT=my-project ACCELERATOR_TYPE=v4-32 \
#   BUCKET=gs://my-bucket RUN_NAME=ade launch/tpu_pod.sh [--config.a.b=value ...]
#
# The bucket is mounted with gcsfuse at MOUNT_POINT on every worker and the run writes to
# MOUNT_POINT/RUN_NAME (iedp_jax.train also accepts --workdir gs://..., through etils.epath, but
# this launcher keeps to the mount, the path tested end to end).
#
# Required: TPU_NAME, ZONE, PROJECT, ACCELERATOR_TYPE (v4-32, v5litepod-16, v5p-64, ...),
#           BUCKET           Cloud Storage bucket for checkpoints and logs: gs://my-bucket or
#                            my-bucket (gs://my-bucket/some/dir mounts only that folder)
#           or SHARED_WORKDIR  instead of BUCKET: an absolute folder already mounted on every
#                            worker (Filestore, NFS); the run writes to SHARED_WORKDIR/RUN_NAME
# Optional: RUN_NAME         the run's folder name (default iedp_YYYYmmdd_HHMMSS, printed);
#                            the same RUN_NAME again resumes the run
#           MOUNT_POINT      where BUCKET is mounted on the workers, default /mnt/iedp
#           RUNTIME_VERSION  TPU software version (default from ACCELERATOR_TYPE: v4 and older
#                            tpu-ubuntu2204-base, v5e v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5,
#                            v6e v2-alpha-tpuv6e)
#           CONFIG           a shipped config name or a config file, default ade
#           EXTRA_ARGS       more --config.* flags, split on whitespace (no quotes inside)
#           REPO_URL         git URL to clone on the workers (REPO_REF: branch/tag/commit);
#                            without it the local working tree (git-tracked and untracked,
#                            non-ignored files) is copied with `gcloud ... scp --recurse`
#           REMOTE_DIR       code folder on the workers, relative to $HOME, default iedp-jax
#           PYTHON_VERSION   Python for the workers' virtual environment (uv), default 3.12
#           SKIP_SETUP=1     skip copy and install (code already in place; the bucket is
#                            still mounted where it is not yet)
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

# Where the run writes: $MOUNT_POINT/$RUN_NAME (BUCKET mounted with gcsfuse) or
# $SHARED_WORKDIR/$RUN_NAME.
if [[ -n ${WORKDIR:-} ]]; then
  if [[ $WORKDIR == *://* ]]; then
    url_bucket=${WORKDIR#*://}
    die "WORKDIR=$WORKDIR is not used by this launcher, which mounts the bucket instead: set BUCKET=gs://${url_bucket%%/*} to mount the bucket with gcsfuse on every worker (the run then writes to MOUNT_POINT/RUN_NAME, default /mnt/iedp/iedp_<date>), or SHARED_WORKDIR to a folder already mounted on every worker."
  fi
  die "WORKDIR is not used: set SHARED_WORKDIR=$WORKDIR if that folder is mounted on every worker (the run then writes to SHARED_WORKDIR/RUN_NAME), or BUCKET to mount a Cloud Storage bucket with gcsfuse instead."
fi
if [[ -n ${SHARED_WORKDIR:-} ]]; then
  [[ -z ${BUCKET:-} ]] || die "set either BUCKET (mounted with gcsfuse) or SHARED_WORKDIR (already mounted), not both."
  [[ $SHARED_WORKDIR == /* ]] \
    || die "SHARED_WORKDIR must be an absolute path of a folder mounted on every worker (e.g. /mnt/filestore/runs), got '$SHARED_WORKDIR'."
  base=$SHARED_WORKDIR
else
  require BUCKET "the Cloud Storage bucket that every worker mounts with gcsfuse for checkpoints and logs, e.g. gs://my-bucket; or set SHARED_WORKDIR to a folder already mounted on every worker"
  bucket=${BUCKET#gs://}
  bucket=${bucket%/}
  bucket_name=${bucket%%/*}
  only_dir=
  if [[ $bucket == */* ]]; then only_dir=${bucket#*/}; fi
  [[ $bucket_name =~ ^[a-z0-9][a-z0-9._-]+[a-z0-9]$ ]] \
    || die "BUCKET must be gs://BUCKET_NAME[/FOLDER] or BUCKET_NAME, got '$BUCKET'."
  MOUNT_POINT=${MOUNT_POINT:-/mnt/iedp}
  [[ $MOUNT_POINT == /* ]] || die "MOUNT_POINT must be an absolute path, got '$MOUNT_POINT'."
  base=$MOUNT_POINT
fi
while [[ $base == */ && $base != / ]]; do base=${base%/}; done
RUN_NAME=${RUN_NAME:-iedp_$(date +%Y%m%d_%H%M%S)}
[[ $RUN_NAME =~ ^[A-Za-z0-9_][A-Za-z0-9._-]*$ ]] \
  || die "RUN_NAME must be one folder name of letters, digits, '.', '_' and '-', got '$RUN_NAME'."
workdir=${base%/}/$RUN_NAME
echo "$prog: run $RUN_NAME, workdir $workdir on every worker (RUN_NAME=$RUN_NAME resumes it)." >&2

if [[ -z ${RUNTIME_VERSION:-} ]]; then
  case $ACCELERATOR_TYPE in
    v2-* | v3-* | v4-*) RUNTIME_VERSION=tpu-ubuntu2204-base ;;
    v5litepod-* | v5e-*) RUNTIME_VERSION=v2-alpha-tpuv5-lite ;;
    v5p-*) RUNTIME_VERSION=v2-alpha-tpuv5 ;;
    v6e-*) RUNTIME_VERSION=v2-alpha-tpuv6e ;;
    *) die "RUNTIME_VERSION is not set and there is no default for ACCELERATOR_TYPE=$ACCELERATOR_TYPE." ;;
  esac
fi
CONFIG=${CONFIG:-ade}
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

# 4. Mount the bucket on every worker (not yet mounted: install gcsfuse from Google's apt
# repository if missing, then mount). --rename-dir-limit lets orbax rename each finished
# checkpoint's temporary folder, which gcsfuse refuses by default.
q_base=$(printf '%q' "$base")
if [[ -n ${bucket_name:-} ]]; then
  gcsfuse_args="--implicit-dirs --rename-dir-limit=200000"
  if [[ -n $only_dir ]]; then gcsfuse_args+=" --only-dir $(printf '%q' "$only_dir")"; fi
  apt_list="deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -cs) main"
  mount="set -eo pipefail; if ! mountpoint -q $q_base; then"
  mount+=" if ! command -v gcsfuse > /dev/null; then"
  mount+=" echo \"$apt_list\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list > /dev/null;"
  mount+=" curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc > /dev/null;"
  mount+=" sudo apt-get -o DPkg::Lock::Timeout=300 update -qq;"
  mount+=" sudo apt-get -o DPkg::Lock::Timeout=300 install -y -qq gcsfuse; fi;"
  mount+=" sudo mkdir -p $q_base; sudo chown \"\$(id -u):\$(id -g)\" $q_base;"
  mount+=" gcsfuse $gcsfuse_args $(printf '%q' "$bucket_name") $q_base; fi"
  on_all_workers "$mount"
fi

# 5. Train on all workers at once.
if [[ -n ${bucket_name:-} ]]; then
  check="mountpoint -q $q_base || { echo \"$prog: $q_base is not mounted on \$(hostname)\" >&2; exit 1; }"
else
  check="[ -d $q_base ] || { echo \"$prog: $q_base is not a folder on \$(hostname)\" >&2; exit 1; }"
fi
train="$venv/bin/python $(printf '%q ' -m iedp_jax.train --config "$CONFIG" --workdir "$workdir" \
  ${extra_args[@]+"${extra_args[@]}"})"
if [[ ${DETACH:-0} == 1 ]]; then
  on_all_workers "$check; cd $q_dir && nohup $train > \$HOME/iedp-train.log 2>&1 < /dev/null &"
  echo "$prog: started; follow with: gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --project=$PROJECT --worker=0 --command='tail -f ~/iedp-train.log'" >&2
else
  on_all_workers "$check; cd $q_dir && $train"
fi
