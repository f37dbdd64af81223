#!/usr/bin/env bash
# Runs examples/ddp_adagrad.py as README shows it, 2 processes over gloo, plain and with --zero, each
# under a time limit: a run that does not finish in time (e.g. hangs at exit) is killed, with its
# processes, and the script fails with a message saying so instead of hanging CI.
#
# Usage: tools/run_ddp_example.sh [extra arguments for the example, e.g. --epochs 1]
# Environment: DDP_EXAMPLE_TIMEOUT (seconds per run, default 180). Needs cadagrad importable (installed,
# or the built tree on PYTHONPATH) and torch with gloo; torchrun from the same environment.
set -euo pipefail
cd "$(dirname "$0")/.."
limit=${DDP_EXAMPLE_TIMEOUT:-180}

run() {
    echo "== [${SECONDS}s] torchrun --nproc-per-node 2 examples/ddp_adagrad.py${*:+ $*}"
    local rc=0
    # --standalone: a free port of its own, so parallel jobs on one machine do not collide.
    # timeout signals the whole process group (torchrun and both ranks); SIGKILL 10 s after SIGTERM.
    timeout --kill-after=10 "$limit" torchrun --standalone --nproc-per-node 2 examples/ddp_adagrad.py "$@" || rc=$?
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "run_ddp_example: FAILED: 'examples/ddp_adagrad.py${*:+ $*}' did not finish in ${limit} s" \
             "(hung, probably at exit); killed" >&2
        exit 1
    elif [ "$rc" -ne 0 ]; then
        echo "run_ddp_example: FAILED: 'examples/ddp_adagrad.py${*:+ $*}' exited with status $rc" >&2
        exit 1
    fi
}

run "$@"
run --zero "$@"
echo "== [${SECONDS}s] run_ddp_example: both runs finished"
