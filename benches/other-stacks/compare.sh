#!/usr/bin/env bash
# netrpc beside tarpc on loadgen's shapes, each as a fraction of raw TCP measured in the run
# just before it: docs/BENCHMARKS.md ("Beside tarpc") comes from this script.
#
#   benches/other-stacks/compare.sh [ROUNDS] [SECONDS]
#
# Per shape and round: `loadgen --inline --baseline` (raw TCP, then netrpc inline), `loadgen`
# (netrpc, pool dispatch), then tarpc-load with tokio's multi-thread runtime, with one
# current-thread runtime for server and clients alike (no thread ever wakes another), and with
# the server on a current-thread runtime of its own thread (apart from its callers, as
# netrpc's server loop is and as two processes would be). Every figure is divided by that
# round's raw TCP figure. Builds both tools in
# release first (tarpc-load in its own target directory: it is not part of the workspace).
# Takes about 3 shapes x ROUNDS x 6 runs x (SECONDS + 0.5).
#
# Caveats (from a review of the benchmarks): raw TCP is measured once per round, in the
# first run, and the tools always run in the order above, each in a new process, so the
# tarpc figures are divided by a raw figure taken some 10 s earlier (raw TCP's own calls/s
# moves up to twofold within an hour on the project's VM): read the absolute calls/s of one
# round beside each other too. tarpc-load spawns a task per request, the counterpart of
# netrpc's pool dispatch more than of its inline dispatch.
set -euo pipefail

rounds=${1:-3}
seconds=${2:-2}
root=$(git rev-parse --show-toplevel)
here="$root/benches/other-stacks"

(cd "$root" && cargo build -q --release --example loadgen)
(cd "$here/tarpc" && cargo build -q --release)
loadgen="$root/target/release/examples/loadgen"
tarpc="$here/tarpc/target/release/tarpc-load"

# calls/s of the line starting with $1 in the output on stdin (the field before "calls/s"),
# without thousands separators.
calls_of() {
    awk -v tool="$1" '$1 == tool {
        for (i = 2; i <= NF; i++) if ($i == "calls/s") { gsub(",", "", $(i - 1)); print $(i - 1); exit }
    }'
}

ratio() {
    awk -v n="$1" -v raw="$2" 'BEGIN { printf "%.3f", n / raw }'
}

printf '%-6s %11s %14s %12s %12s %14s %14s\n' shape "raw calls/s" "netrpc inline" \
    "netrpc pool" "tarpc multi" "tarpc 1 thread" "tarpc 2 threads"
for shape in "1 1" "1 64" "4 16"; do
    read -r conns inflight <<<"$shape"
    flags=(--conns "$conns" --inflight "$inflight" --seconds "$seconds" --warmup 0.5)
    for _ in $(seq "$rounds"); do
        inline_run=$("$loadgen" --inproc "${flags[@]}" --inline --baseline 2>&1)
        raw=$(calls_of "raw" <<<"$inline_run")
        inline=$(calls_of "netrpc" <<<"$inline_run")
        pool=$("$loadgen" --inproc "${flags[@]}" 2>&1 | calls_of "netrpc")
        multi=$("$tarpc" "${flags[@]}" --runtime multi | calls_of "tarpc")
        current=$("$tarpc" "${flags[@]}" --runtime current | calls_of "tarpc")
        apart=$("$tarpc" "${flags[@]}" --runtime current --server-thread | calls_of "tarpc")
        printf '%-6s %11s %14s %12s %12s %14s %14s\n' "${conns}x${inflight}" "$raw" \
            "$(ratio "$inline" "$raw")" "$(ratio "$pool" "$raw")" "$(ratio "$multi" "$raw")" \
            "$(ratio "$current" "$raw")" "$(ratio "$apart" "$raw")"
    done
done
