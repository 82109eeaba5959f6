#!/usr/bin/env bash
# The benchmark suite: builds release, then runs every benchmark in order and tees all output
# into target/bench-results.txt. Needs root for the Serf comparison (apt-get install serf
# nftables, nftables counters); everything runs on loopback and cleans up after itself.
#
#   scripts/bench.sh            # all of them (about 25-35 minutes on 2 cores)
set -uo pipefail
cd "$(dirname "$0")/.."
out=target/bench-results.txt
mkdir -p target
: > "$out"
failed=()

step() {
    local name="$1"; shift
    echo "=== [$(date +%H:%M:%S)] $name: $*" | tee -a "$out" >&2
    local t0=$SECONDS
    if "$@" 2>&1 | tee -a "$out"; then
        echo "=== $name: done in $((SECONDS - t0)) s" | tee -a "$out" >&2
    else
        echo "=== $name: FAILED after $((SECONDS - t0)) s" | tee -a "$out" >&2
        failed+=("$name")
    fi
}

if ! command -v serf >/dev/null || ! command -v nft >/dev/null; then
    echo "=== installing serf and nftables (for the Serf comparison)" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq serf nftables) >/dev/null \
        || echo "=== apt-get install serf nftables failed; the serf benchmark will say why" >&2
fi

step build cargo build --release --bins
assim=target/release/assim
step seal cargo bench -p assim-seal
step log cargo bench -p assim-log
step ring cargo bench -p assim --bench ring
step ingest cargo bench -p assim --bench ingest
step serf cargo bench -p assim --bench serf
step flood cargo bench -p assim --bench flood
step sim-crash "$assim" sim --nodes 100000 --crash 1000 --seed 1
step sim-loss "$assim" sim --nodes 10000 --loss 5 --duration 10m --seed 1
step sim-wire "$assim" sim --wire --nodes 20000

if [ ${#failed[@]} -eq 0 ]; then
    echo "=== all benchmarks done; results in $out" >&2
else
    echo "=== failed: ${failed[*]}; results in $out" >&2
    exit 1
fi
