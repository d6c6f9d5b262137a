#!/usr/bin/env bash
# CI check of the sharded workflow: runs the Snakefile locally (--cores 2) and compares every
# merged output byte for byte (cmp) with an unsharded run of the same command:
#   embed  HyenaDNA tiny, 12 records cut from the E. coli genome, 3 shards (pooled), and
#          2 shards with --pool none
#   score  Evo 2 tiny, 7 records of 1-5 kb, 3 shards, with per-base log-likelihoods
#   vep    Evo 2 tiny, a 2-chromosome reference and a VCF (multi-allelic rows too), 3 shards
# then checks that a second snakemake run finds nothing to do, and that a shard whose outputs
# were deleted is redone and merged to the same bytes.
#
# Usage: workflows/test.sh [HYENA]      HYENA: the hyena binary (or the HYENA environment
#        variable; default: target/release/hyena of this repository). Snakemake must be
#        installed (pip install -r workflows/requirements.txt); SNAKEMAKE names another one.
#        KEEP=1 keeps the scratch folder.
# Exit status: 0 when every output matches, 1 on any difference or failure, 2 when a
# prerequisite is missing.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
hyena=${1:-${HYENA:-$repo/target/release/hyena}}
snakemake=${SNAKEMAKE:-snakemake}

if ! command -v "$snakemake" >/dev/null 2>&1; then
    echo "workflows/test.sh: snakemake not found ('$snakemake')." >&2
    echo "  install it first: pip install -r workflows/requirements.txt (or set SNAKEMAKE)" >&2
    exit 2
fi
case "$hyena" in
    */*) hyena=$(cd "$(dirname "$hyena")" && pwd)/$(basename "$hyena") ;;
    *) hyena=$(command -v "$hyena" || true) ;;
esac
if [ ! -x "$hyena" ]; then
    echo "workflows/test.sh: no hyena binary at '${1:-${HYENA:-$repo/target/release/hyena}}'" \
        "(cargo build --release -p hyena-cli)" >&2
    exit 2
fi
if ! "$hyena" merge --help >/dev/null 2>&1; then
    echo "workflows/test.sh: $hyena has no 'merge' subcommand (a CLI without --shard support)" >&2
    exit 2
fi
command -v python3 >/dev/null || {
    echo "workflows/test.sh: python3 is needed to cut the test data" >&2
    exit 2
}

hyenadna=$repo/tests/fixtures/hyenadna/tiny-hf
evo2=$repo/tests/fixtures/evo2/tiny
genome=$repo/data/ecoli/MG1655-K12.fasta.gz

tmp=$(mktemp -d "${TMPDIR:-/tmp}/hyena-workflow-test.XXXXXX")
cleanup() {
    if [ "${KEEP:-0}" = 1 ] || [ "${failed:-0}" = 1 ]; then
        echo "scratch folder kept: $tmp"
    else
        rm -rf "$tmp"
    fi
}
trap cleanup EXIT
failed=0
t_start=$(date +%s)

echo "== $("$snakemake" --version | sed 's/^/snakemake /'); $("$hyena" --version)"

# Test data, cut from the E. coli genome at fixed places (deterministic, a few kb each).
python3 - "$genome" "$tmp" <<'EOF'
import gzip, sys
genome, out = sys.argv[1], sys.argv[2]
with gzip.open(genome, "rt") as f:
    seq = "".join(l.strip() for l in f if not l.startswith(">"))

def write_fasta(path, recs, width=60):
    with open(path, "w") as f:
        for name, s in recs:
            f.write(f">{name}\n")
            for i in range(0, len(s), width):
                f.write(s[i : i + width] + "\n")

# HyenaDNA tiny takes at most 1026 tokens: 12 records of 64-1020 bases.
lens = [1000, 250, 700, 1020, 64, 900, 333, 512, 1000, 777, 128, 640]
write_fasta(f"{out}/embed.fa",
            [(f"ecoli_{i + 1}", seq[100_000 * (i + 1) : 100_000 * (i + 1) + n]) for i, n in enumerate(lens)])
# Evo 2 tiny: 7 records of 1-5 kb.
lens = [3000, 1200, 5000, 2048, 1000, 4100, 2500]
write_fasta(f"{out}/score.fa",
            [(f"ecoli_{i + 1}", seq[1_500_000 + 250_000 * i : 1_500_000 + 250_000 * i + n]) for i, n in enumerate(lens)])
# vep: two chromosomes, variants every 157 bases (some near the ends, where windows are cut),
# every third one multi-allelic (one output row per ALT).
chroms = [("chrA", seq[3_000_000:3_008_000]), ("chrB", seq[4_000_000:4_005_000])]
write_fasta(f"{out}/ref.fa", chroms)
with open(f"{out}/variants.vcf", "w") as f:
    f.write("##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\n")
    k = 0
    for name, s in chroms:
        for p in list(range(3, len(s), 157)) + [len(s)]:
            r = s[p - 1]
            alts = [c for c in "ACGT" if c != r]
            alt = ",".join(alts) if k % 3 == 0 else alts[k % 3]
            f.write(f"{name}\t{p}\tv{k}\t{r}\t{alt}\n")
            k += 1
EOF

fail() {
    echo "FAIL: $*" >&2
    failed=1
}

# run_case NAME MODE SHARDS MODEL EXTRA: an unsharded run, then the workflow, then cmp.
run_case() {
    local name=$1 mode=$2 shards=$3 model=$4 extra=$5
    local dir=$tmp/$name t0 t1 t2 suffix
    case "$mode" in
        embed) suffix=npy ;;
        score) suffix=jsonl ;;
        vep) suffix=tsv ;;
    esac
    mkdir -p "$dir/whole"
    local whole=$dir/whole/out.$suffix merged=$dir/results/out.$suffix
    local -a data extra_args=()
    [ -n "$extra" ] && read -r -a extra_args <<<"$extra"
    local -a whole_pb=()
    case "$mode" in
        embed) data=(--fasta "$tmp/embed.fa") ;;
        score)
            data=(--fasta "$tmp/score.fa")
            whole_pb=(--per-base "$dir/whole/per-base.tsv")
            ;;
        vep) data=(--reference "$tmp/ref.fa" --variants "$tmp/variants.vcf") ;;
    esac
    echo "== $name: hyena $mode, $shards shards${extra:+, $extra}"
    t0=$(date +%s)
    if ! RAYON_NUM_THREADS=2 "$hyena" "$mode" --model "$model" "${data[@]}" --out "$whole" \
        "${whole_pb[@]}" "${extra_args[@]}" >"$dir/whole.log" 2>&1; then
        fail "$name: the unsharded run failed:"
        tail -n 20 "$dir/whole.log" >&2
        return
    fi
    t1=$(date +%s)
    {
        echo "hyena: \"$hyena\""
        echo "model: \"$model\""
        echo "mode: $mode"
        case "$mode" in
            vep)
                echo "reference: \"$tmp/ref.fa\""
                echo "variants: \"$tmp/variants.vcf\""
                ;;
            *) echo "fasta: \"$tmp/$mode.fa\"" ;;
        esac
        [ "$mode" = score ] && echo "per_base: results/per-base.tsv"
        echo "shards: $shards"
        echo "out: results/out.$suffix"
        echo "extra: \"$extra\""
        echo "threads: 1"
    } >"$dir/config.yaml"
    if ! "$snakemake" --snakefile "$here/Snakefile" --directory "$dir" \
        --configfile "$dir/config.yaml" --cores 2 --printshellcmds >"$dir/snakemake.log" 2>&1; then
        fail "$name: snakemake failed:"
        tail -n 30 "$dir/snakemake.log" >&2
        for l in "$dir"/results/*.shards/logs/*.log; do
            [ -f "$l" ] && { echo "--- $l" >&2; tail -n 10 "$l" >&2; }
        done
        return
    fi
    t2=$(date +%s)
    local ok=1
    compare() {
        if cmp "$1" "$2"; then
            echo "   identical: $(basename "$2") ($(wc -c <"$2") bytes)"
        else
            fail "$name: $2 differs from the unsharded $1"
            ok=0
        fi
    }
    compare "$whole" "$merged"
    [ "$mode" = embed ] && compare "$whole.records.tsv" "$merged.records.tsv"
    [ "$mode" = score ] && compare "$dir/whole/per-base.tsv" "$dir/results/per-base.tsv"
    local jobs
    jobs=$(grep -c '^rule shard:\|hyena .*: shard [0-9]* of' "$dir/snakemake.log" || true)
    echo "   unsharded $((t1 - t0)) s, workflow $((t2 - t1)) s ($jobs shard job(s) + merge)"
    [ "$ok" = 1 ] || return 0

    # A second run has nothing to do.
    if ! "$snakemake" --snakefile "$here/Snakefile" --directory "$dir" \
        --configfile "$dir/config.yaml" --cores 2 --dry-run >"$dir/again.log" 2>&1 \
        || ! grep -q "Nothing to be done" "$dir/again.log"; then
        fail "$name: a second snakemake run wants to do something:"
        tail -n 20 "$dir/again.log" >&2
    fi
}

run_case embed-3 embed 3 "$hyenadna" ""
run_case embed-none-2 embed 2 "$hyenadna" "--pool none"
run_case score-3 score 3 "$evo2" ""
run_case vep-3 vep 3 "$evo2" "--window 512"

# Redo one shard: delete shard 2's outputs and the merged file, rerun, compare again.
if [ "$failed" = 0 ]; then
    dir=$tmp/vep-3
    echo "== vep-3: shard 2 deleted, workflow rerun"
    rm -f "$dir"/results/out.tsv "$dir"/results/out.tsv.shards/shard-2-of-3.tsv
    if "$snakemake" --snakefile "$here/Snakefile" --directory "$dir" \
        --configfile "$dir/config.yaml" --cores 2 >"$dir/redo.log" 2>&1; then
        if cmp "$dir/whole/out.tsv" "$dir/results/out.tsv"; then
            n=$(grep -c 'hyena vep: shard [0-9]* of' "$dir/redo.log" || true)
            if [ "$n" = 1 ]; then
                echo "   identical after redoing 1 shard"
            else
                fail "vep-3: the rerun ran $n shard job(s), not 1"
            fi
        else
            fail "vep-3: the merge after the rerun differs"
        fi
    else
        fail "vep-3: the rerun failed:"
        tail -n 30 "$dir/redo.log" >&2
    fi
fi

echo "== $(($(date +%s) - t_start)) s in all"
if [ "$failed" = 0 ]; then
    echo "PASS: every merged output is byte-identical to the unsharded run"
else
    echo "FAIL: see above" >&2
    exit 1
fi
