#!/usr/bin/env bash
# Compares two revisions of netrpc on every loadgen shape, side by side, each run beside its
# own raw TCP baseline: the numbers in docs/BENCHMARKS.md ("All shapes beside raw TCP") come
# from this script.
#
#   benches/compare_revisions.sh BASE [ROUNDS] [SECONDS]
#
# BASE is any git revision ("before"); "after" is the working tree. loadgen is built in release
# for both (BASE in a temporary git worktree with its own target directory), then each shape runs
# ROUNDS times (default 3), before and after interleaved, and which goes first alternating
# from round to round, so that drift in the machine hits both alike. Prints one line per run:
# revision, shape, dispatch, driver, ratio to raw, netrpc calls/s, p50, p99, CPU time per call
# as a multiple of raw TCP's ("-" from a loadgen that does not report CPU), and "ERR" where
# either side reported failed calls (its figures then count only the calls that succeeded).
# Latencies are closed-loop at saturation: each driver starts a call only as one completes.
# A revision whose loadgen refuses a flag prints "(not supported by this revision)"; but
# loadgen refuses unknown flags only since 2026-12-07's eleventh sitting: an older one runs
# its defaults for a flag it lacks (such as --no-batch), so its row is not that shape.
# Run it on a quiet machine; it takes about
# 10 shapes x 2 revisions x ROUNDS x (SECONDS + 0.5) x 2 (raw and netrpc).
# ONLY=REGEX runs only the shapes whose label matches (say ONLY='4x16 inline').
# EXTRA='FLAGS' adds loadgen flags to every run of both revisions (say EXTRA='--busy-poll-us 50').
set -euo pipefail

base=${1:?usage: benches/compare_revisions.sh BASE [ROUNDS] [SECONDS]}
rounds=${2:-3}
seconds=${3:-2}

root=$(git rev-parse --show-toplevel)
work=$(mktemp -d)
trap 'git -C "$root" worktree remove --force "$work/base" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

git -C "$root" worktree add --detach "$work/base" "$base" >/dev/null
(cd "$work/base" && CARGO_TARGET_DIR="$work/target-base" cargo build -q --release --example loadgen)
(cd "$root" && CARGO_TARGET_DIR="$root/target" cargo build -q --release --example loadgen)
cp "$work/target-base/release/examples/loadgen" "$work/loadgen-before"
cp "$root/target/release/examples/loadgen" "$work/loadgen-after"

# Each shape: loadgen flags, then a label. `--no-batch` exists only after the batch commit: a
# "before" binary without it that refuses unknown flags is reported unsupported; an older one
# runs its own (unbatched) driver under both labels (see the header).
shapes=(
    "--conns 1 --inflight 1|1x1 pool"
    "--conns 1 --inflight 1 --inline|1x1 inline"
    "--conns 1 --inflight 64|1x64 pool batch"
    "--conns 1 --inflight 64 --no-batch|1x64 pool one-by-one"
    "--conns 1 --inflight 64 --inline|1x64 inline batch"
    "--conns 1 --inflight 64 --inline --no-batch|1x64 inline one-by-one"
    "--conns 4 --inflight 16|4x16 pool batch"
    "--conns 4 --inflight 16 --no-batch|4x16 pool one-by-one"
    "--conns 4 --inflight 16 --inline|4x16 inline batch"
    "--conns 4 --inflight 16 --inline --no-batch|4x16 inline one-by-one"
)

# Prints "ratio calls/s p50 p99 cpu errors" from one loadgen run's output.
summarize() {
    awk '
        BEGIN     { cpu = "-"; errors = "ok" }
        /errors:/ && !/errors: none/ { errors = "ERR" }
        /^netrpc/ { calls = $2; p50 = $5 $6; p99 = $11 $12 }
        /^ratio/  {
            ratio = $2
            if (index($0, "CPU per call")) {
                cpu = $0
                sub(/.*CPU per call /, "", cpu)
                sub(/ raw.*/, "", cpu)
            }
        }
        END       { printf "%s %s %s %s %s %s\n", ratio, calls, p50, p99, cpu, errors }'
}

echo "before: $(git -C "$root" rev-parse --short "$base"); after: the working tree, $(git -C "$root" describe --always --dirty)"
printf '%-7s %-26s %6s %12s %9s %9s %8s %6s\n' revision shape ratio calls/s p50 p99 cpu/raw errors
for shape in "${shapes[@]}"; do
    flags=${shape%%|*}
    label=${shape#*|}
    [[ $label =~ ${ONLY:-.} ]] || continue
    for round in $(seq "$rounds"); do
        sides="before after"
        ((round % 2 == 0)) && sides="after before"
        for side in $sides; do
            binary="$work/loadgen-$side"
            # shellcheck disable=SC2086 # the flags are meant to split into words
            if ! output=$("$binary" --inproc $flags ${EXTRA:-} --seconds "$seconds" --warmup 0.5 --baseline 2>&1); then
                printf '%-7s %-26s %s\n' "$side" "$label" "(not supported by this revision)"
                continue
            fi
            read -r ratio calls p50 p99 cpu errors <<<"$(summarize <<<"$output")"
            printf '%-7s %-26s %6s %12s %9s %9s %8s %6s\n' \
                "$side" "$label" "$ratio" "$calls" "$p50" "$p99" "$cpu" "$errors"
        done
    done
done
