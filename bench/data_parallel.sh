#!/usr/bin/env bash
# Data-parallel training step time on one machine: 1 process x 2 threads against
# `mpirun -np 2` x 1 thread, at the HyenaDNA-tiny and -small presets (global batch 8 and 2),
# in alternating rounds (stdout apart from stderr, where the timings are, so that lines of
# the two streams do not interleave); prints each run's median step time and the all-reduce time per step,
# then the medians over the rounds. Needs a hyena built with `--features mpi`.
#
# Usage: bench/data_parallel.sh [HYENA] [ROUNDS]
#   HYENA  default target/mpi/release/hyena (as `.ci/run` builds it); ROUNDS default 3.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
hyena=${1:-$repo/target/mpi/release/hyena}
rounds=${2:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cd "$repo"

declare -A args=(
    [tiny]="--preset hyenadna-tiny --steps 12 --eval-every 1000"
    [small]="--preset hyenadna-small --batch 2 --steps 5 --eval-every 1000"
)
printf 'preset\tround\tlayout\tstep_s\tallreduce_ms\n'
for preset in tiny small; do
    for r in $(seq 1 "$rounds"); do
        for layout in 1x2 2x1; do
            out=$work/$preset-$r-$layout
            # shellcheck disable=SC2086
            if [ "$layout" = 1x2 ]; then
                RAYON_NUM_THREADS=2 "$hyena" train ${args[$preset]} --out "$out" \
                    >"$out.stdout" 2>"$out.log"
            else
                mpirun -np 2 --oversubscribe -x RAYON_NUM_THREADS=1 \
                    "$hyena" train ${args[$preset]} --out "$out" >"$out.stdout" 2>"$out.log"
            fi
            step=$(sed -n 's/^step time: median \([0-9.]*\) s.*/\1/p' "$out.log")
            ar=$(sed -n 's/.*data-parallel: \([0-9.]*\) ms per step.*/\1/p' "$out.log")
            printf '%s\t%s\t%s\t%s\t%s\n' "$preset" "$r" "$layout" "$step" "${ar:--}"
        done
    done
done | tee "$work/all.tsv"
echo
echo "medians over $rounds rounds:"
python3 - "$work/all.tsv" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
for preset in ("tiny", "small"):
    st = {k: statistics.median(float(r[3]) for r in rows if r[0] == preset and r[2] == k)
          for k in ("1x2", "2x1")}
    ar = [float(r[4]) for r in rows if r[0] == preset and r[2] == "2x1" and r[4] != "-"]
    print(f"{preset}: 1x2 {st['1x2']:.4f} s/step, 2x1 {st['2x1']:.4f} s/step "
          f"(ratio 2x1/1x2 {st['2x1'] / st['1x2']:.3f}); all-reduce "
          f"{statistics.median(ar):.2f} ms/step")
PY
