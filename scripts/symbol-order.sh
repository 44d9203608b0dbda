#!/usr/bin/env bash
# Records which functions podnetd runs and writes them to packaging/symbol-order/podnetd.txt,
# the list build.rs hands the linker so that this code comes first (why, and what a stale list
# costs: `symbol_order` in build.rs). Run it as root, like the benchmarks, after changes that
# add or rename much of what podnetd runs at start-up or while it programs peers.
#
# How: the scale benchmark's programming part (100 peers, then one more lease and one lease
# deleted, 20 times each), with the leases in etcd and in the Kubernetes API, host-gw and
# vxlan, with podnetd under valgrind's callgrind; every function callgrind saw that the binary
# defines goes into the list. Twice: for podnetd as `cargo bench` builds it and as
# `cargo build --release` does. cargo gives podnet's own code other symbol names in the two
# (the profile is part of the crate's identity), and both should be laid out alike: the one
# ships, the other is what the benchmarks measure. Needs valgrind (apt-get install valgrind)
# and what the benchmark needs (scripts/setup.sh).
set -euo pipefail
export LC_ALL=C  # one collation for sort and comm
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "symbol-order: valgrind not found (apt-get install valgrind)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "symbol-order: run as root (the benchmark makes network namespaces)" >&2; exit 1; }

out=$(mktemp -d /tmp/podnet-symbol-order.XXXXXX)
trap 'rm -rf "$out"' EXIT

# Runs the programming part with the podnetd now at target/release/podnetd under callgrind
# and writes what it ran to $out/$1.ran; $1 names the build, $2 is the benchmark's executable.
record() {
  local build=$1 bench=$2
  for store in etcd kubernetes; do
    BENCH_PARTS=programming BENCH_SIZES=100 BENCH_STORES=$store \
      BENCH_WRAP="valgrind --tool=callgrind --demangle=no --callgrind-out-file=$out/$build-$store.%p" \
      "$bench" --bench >"$out/$build-$store.log" 2>&1 \
      || { tail -20 "$out/$build-$store.log" >&2; exit 1; }
    # podnetd must have exited on its own (the lab kills it 5 s after SIGTERM) to leave a profile.
    compgen -G "$out/$build-$store.[0-9]*" >/dev/null \
      || { echo "symbol-order: no callgrind profile from the $build build with $store" >&2; exit 1; }
  done
  nm --defined-only target/release/podnetd | awk '$2 ~ /^[tTwW]$/ { print $3 }' | sort -u >"$out/$build.defined"
  # callgrind names a function in full the first time (`fn=(12) name`), by number afterwards.
  sed -n -E 's/^c?fn=\([0-9]+\) (.+)$/\1/p' "$out/$build"-*.[0-9]* | sort -u >"$out/$build.seen"
  comm -12 "$out/$build.defined" "$out/$build.seen" >"$out/$build.ran"
  echo "symbol-order: $build build: $(wc -l <"$out/$build.ran") functions run of $(wc -l <"$out/$build.defined")"
}

cargo bench --bench scale --no-run --message-format=json >"$out/build.json" 2>"$out/build.log" \
  || { tail -20 "$out/build.log" >&2; exit 1; }
bench=$(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "scale" and m.get("executable"):
        print(m["executable"])
' "$out/build.json")
[ -x "$bench" ] || { echo "symbol-order: no scale benchmark executable in cargo's output" >&2; exit 1; }
record bench "$bench"
cargo build --release --bin podnetd
record release "$bench"
sort -u "$out/bench.ran" "$out/release.ran" >packaging/symbol-order/podnetd.txt
echo "symbol-order: $(wc -l <packaging/symbol-order/podnetd.txt) names written to packaging/symbol-order/podnetd.txt"
