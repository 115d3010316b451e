#!/usr/bin/env bash
# Runs N copies of a command on this machine as one multi-process JAX job (for testing
# multi-host code on CPU). Each copy gets JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
# JAX_PROCESS_ID, which iedp_jax.infra.distributed passes to jax.distributed.initialize().
#
#   launch/local_multiprocess.sh [-n NUM_PROCESSES] [-d DEVICES_PER_PROCESS] [-p PORT] -- COMMAND ARGS...
#
# Example (2 processes x 4 fake CPU devices = 8 devices):
#   launch/local_multiprocess.sh -n 2 -d 4 -- python -m iedp_jax.train \
#       --config smoke_seg --workdir /tmp/mp_run
#
# Output lines are prefixed with "[p i] ". If any process exits non-zero, the others are
# stopped and the script exits with that status.
set -euo pipefail

prog=$(basename "$0")

usage() {
  cat <<EOF
usage: $prog [-n NUM_PROCESSES] [-d DEVICES_PER_PROCESS] [-p PORT] -- COMMAND ARGS...
  -n  number of processes (default 2)
  -d  fake CPU devices per process: sets JAX_PLATFORMS=cpu and
      XLA_FLAGS=--xla_force_host_platform_device_count=D (default: unset, JAX's own devices)
  -p  coordinator port on localhost (default: a free port)
EOF
}

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

num_processes=2
devices=""
port=""
while getopts ":n:d:p:h" opt; do
  case $opt in
    n) num_processes=$OPTARG ;;
    d) devices=$OPTARG ;;
    p) port=$OPTARG ;;
    h) usage; exit 0 ;;
    :) echo "$prog: option -$OPTARG needs a value." >&2; usage >&2; exit 2 ;;
    *) echo "$prog: unknown option -$OPTARG." >&2; usage >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
if [[ ${1:-} == "--" ]]; then shift; fi
if (($# == 0)); then
  echo "$prog: no command given." >&2
  usage >&2
  exit 2
fi
if ! is_uint "$num_processes" || ((num_processes < 1)); then
  echo "$prog: -n must be a positive integer, got '$num_processes'." >&2; exit 2
fi
if [[ -n $devices ]] && { ! is_uint "$devices" || ((devices < 1)); }; then
  echo "$prog: -d must be a positive integer, got '$devices'." >&2; exit 2
fi
if [[ -z $port ]]; then
  free_port='import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])'
  port=$(python3 -c "$free_port" 2>/dev/null || python -c "$free_port" 2>/dev/null || echo 12355)
fi
if ! is_uint "$port" || ((port < 1 || port > 65535)); then
  echo "$prog: -p must be a port number, got '$port'." >&2; exit 2
fi

export JAX_COORDINATOR_ADDRESS="localhost:$port"
export JAX_NUM_PROCESSES="$num_processes"
if [[ -n $devices ]]; then
  export JAX_PLATFORMS=cpu
  export XLA_FLAGS="--xla_force_host_platform_device_count=$devices${XLA_FLAGS:+ $XLA_FLAGS}"
fi

# Job control: every background job gets its own process group, so stopping a process also
# stops whatever it started (its output filter included).
set -m

pids=()
stopped=0
stop_all() {
  ((stopped)) && return 0
  stopped=1
  local pid alive=() waited=0
  for pid in ${pids[@]+"${pids[@]}"}; do
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
      alive+=("$pid")
    fi
  done
  # Give them up to 10 s to exit, then SIGKILL.
  while ((waited < 100)); do
    local any=0
    for pid in ${alive[@]+"${alive[@]}"}; do
      if kill -0 "$pid" 2>/dev/null; then any=1; fi
    done
    ((any)) || break
    sleep 0.1
    waited=$((waited + 1))
  done
  for pid in ${alive[@]+"${alive[@]}"}; do
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}
trap 'stop_all' EXIT
trap 'echo "$prog: interrupted; stopping all processes." >&2; stop_all; exit 130' INT
trap 'echo "$prog: terminated; stopping all processes." >&2; stop_all; exit 143' TERM

run_one() {  # run_one INDEX COMMAND...: runs COMMAND with stdout+stderr prefixed "[p INDEX] ".
  local index=$1
  shift
  export JAX_PROCESS_ID="$index"
  # Outlive INT/TERM (a no-op trap, reset to the default in the command) so that this shell
  # exits only after the command and its output filter are done.
  trap ':' INT TERM
  exec 2> /dev/null  # (this shell's own notices, e.g. "Terminated"; the command's go to the pipe)
  # pipefail: the pipeline's status is the command's status when it fails.
  # The filter ignores INT/TERM so that it prints everything the command wrote before dying.
  "$@" < /dev/null 2>&1 | {
    trap '' INT TERM
    awk -v prefix="[p $index] " '{ print prefix $0; fflush() }'
  }
}

echo "$prog: $num_processes processes, coordinator $JAX_COORDINATOR_ADDRESS${devices:+, $devices CPU devices each}" >&2
for ((i = 0; i < num_processes; i++)); do
  run_one "$i" "$@" &
  pids+=("$!")
done
set +m  # (no job-status notices from here on)

# Wait for all; on the first failure stop the others and exit with its status.
remaining=$num_processes
declare -a done_flags
while ((remaining > 0)); do
  for ((i = 0; i < num_processes; i++)); do
    [[ -n ${done_flags[i]:-} ]] && continue
    pid=${pids[i]}
    kill -0 "$pid" 2>/dev/null && continue
    status=0
    wait "$pid" || status=$?
    done_flags[i]=1
    remaining=$((remaining - 1))
    if ((status != 0)); then
      echo "$prog: process $i (pid $pid) failed with exit status $status; stopping the others." >&2
      stop_all
      exit "$status"
    fi
  done
  if ((remaining > 0)); then sleep 0.1; fi
done
echo "$prog: all $num_processes processes finished successfully." >&2
