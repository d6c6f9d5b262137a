#!/usr/bin/env bash
# Inference throughput of N local shards against one process on the same machine:
# `hyena embed` of a FASTA by one process with T threads, against N shard processes
# (`--shard i/N`) started together with T/N threads each, then `hyena merge` (its time
# included); alternating rounds, medians; checks that the merged array equals the one-process
# array byte for byte.
#
# Usage: bench/shard_throughput.sh MODEL FASTA [N] [ROUNDS] [HYENA]
#   N shards (default 2), ROUNDS (default 3), HYENA (default target/release/hyena).
#   Threads: T = N (one per shard), or set THREADS.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
model=${1:?usage: bench/shard_throughput.sh MODEL FASTA [N] [ROUNDS] [HYENA]}
fasta=${2:?FASTA}
n=${3:-2}
rounds=${4:-3}
hyena=${5:-$repo/target/release/hyena}
threads=${THREADS:-$n}
per=$(( threads / n > 0 ? threads / n : 1 ))
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
now() { date +%s.%N; }
printf 'round\tlayout\tseconds\n'
for r in $(seq 1 "$rounds"); do
    t0=$(now)
    RAYON_NUM_THREADS=$threads "$hyena" embed --model "$model" --fasta "$fasta" \
        --out "$work/one.npy" --force >/dev/null 2>&1
    t1=$(now)
    printf '%s\t1x%s\t%.2f\n' "$r" "$threads" "$(echo "$t1 - $t0" | bc)"
    rm -f "$work"/s*.npy*
    t0=$(now)
    pids=()
    for i in $(seq 1 "$n"); do
        RAYON_NUM_THREADS=$per "$hyena" embed --model "$model" --fasta "$fasta" \
            --out "$work/s$i.npy" --shard "$i/$n" >/dev/null 2>&1 &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p"; done
    "$hyena" merge "$work"/s*.npy --out "$work/merged.npy" --force >/dev/null
    t1=$(now)
    printf '%s\t%sx%s\t%.2f\n' "$r" "$n" "$per" "$(echo "$t1 - $t0" | bc)"
    cmp "$work/one.npy" "$work/merged.npy"
done | tee "$work/times.tsv"
python3 - "$work/times.tsv" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1])]
layouts = sorted({r[1] for r in rows}, key=lambda x: x.startswith("1x") is False)
med = {k: statistics.median(float(r[2]) for r in rows if r[1] == k) for k in layouts}
one, sharded = med[layouts[0]], med[layouts[1]]
print(f"medians: one process {one:.2f} s, {layouts[1]} shards + merge {sharded:.2f} s; "
      f"throughput ratio shards/one {one / sharded:.3f} (merged output identical)")
PY
