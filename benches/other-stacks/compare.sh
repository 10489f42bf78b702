#!/usr/bin/env bash
# netrpc beside tarpc on loadgen's shapes, each as a fraction of raw TCP measured in the run
# just before it: docs/BENCHMARKS.md ("Beside tarpc") comes from this script.
#
#   benches/other-stacks/compare.sh [ROUNDS] [SECONDS]
#
# Per shape and round: `loadgen --inline --baseline` (raw TCP, then netrpc inline), then, in
# an order that rotates by one each round, `loadgen` (netrpc, pool dispatch) and tarpc-load
# with tokio's multi-thread runtime, with one current-thread runtime for server and clients
# alike (no thread ever wakes another), and with the server on a current-thread runtime of
# its own thread (apart from its callers, as netrpc's server loop is and as two processes
# would be), then `loadgen --inline --baseline` again. Every figure is divided by the mean of
# the round's two raw TCP figures (netrpc inline's two figures are averaged too), and the
# raw column shows both, so a round in which the machine's speed moved shows it. Builds
# both tools in release first (tarpc-load in its own target directory: it is not part of
# the workspace). Takes about 3 shapes x ROUNDS x 6 runs x (SECONDS + 0.5) plus one more
# for the raw figure measured at each end of a round.
#
# Caveats: raw TCP's calls/s moves up to twofold within an hour on the project's VM, and
# each tool runs in a new process; the two raw figures of a round bracket the others but
# do not pin them. tarpc-load spawns a task per request, the counterpart of netrpc's pool
# dispatch more than of its inline dispatch.
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

# The mean of its two arguments.
mean() {
    awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", (a + b) / 2 }'
}

# Runs the tool named $1 on the current shape; prints its calls/s.
run_tool() {
    case "$1" in
    pool) "$loadgen" --inproc "${flags[@]}" 2>&1 | calls_of "netrpc" ;;
    multi) "$tarpc" "${flags[@]}" --runtime multi | calls_of "tarpc" ;;
    current) "$tarpc" "${flags[@]}" --runtime current | calls_of "tarpc" ;;
    apart) "$tarpc" "${flags[@]}" --runtime current --server-thread | calls_of "tarpc" ;;
    esac
}

printf '%-6s %17s %14s %12s %12s %14s %14s\n' shape "raw calls/s" "netrpc inline" \
    "netrpc pool" "tarpc multi" "tarpc 1 thread" "tarpc 2 threads"
tools=(pool multi current apart)
for shape in "1 1" "1 64" "4 16"; do
    read -r conns inflight <<<"$shape"
    flags=(--conns "$conns" --inflight "$inflight" --seconds "$seconds" --warmup 0.5)
    for round in $(seq "$rounds"); do
        first=$("$loadgen" --inproc "${flags[@]}" --inline --baseline 2>&1)
        declare -A calls=()
        for i in "${!tools[@]}"; do
            tool=${tools[$(((i + round) % ${#tools[@]}))]}
            calls[$tool]=$(run_tool "$tool")
        done
        last=$("$loadgen" --inproc "${flags[@]}" --inline --baseline 2>&1)
        raw_first=$(calls_of "raw" <<<"$first")
        raw_last=$(calls_of "raw" <<<"$last")
        raw=$(mean "$raw_first" "$raw_last")
        inline=$(mean "$(calls_of "netrpc" <<<"$first")" "$(calls_of "netrpc" <<<"$last")")
        printf '%-6s %17s %14s %12s %12s %14s %14s\n' "${conns}x${inflight}" \
            "$raw_first/$raw_last" "$(ratio "$inline" "$raw")" "$(ratio "${calls[pool]}" "$raw")" \
            "$(ratio "${calls[multi]}" "$raw")" "$(ratio "${calls[current]}" "$raw")" \
            "$(ratio "${calls[apart]}" "$raw")"
        unset calls
    done
done
