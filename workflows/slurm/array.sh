#!/usr/bin/env bash
# Sharded hyena embed | score | vep as a plain Slurm job array (no Snakemake needed).
#
# Each array task runs one shard, `hyena MODE ... --shard I/N` with I = SLURM_ARRAY_TASK_ID;
# a merge step (`hyena merge`) then joins the shards into the bytes an unsharded run writes.
#
# Usage:
#   submit the array and a merge job that waits for it (afterok), from the login node:
#     array.sh --submit [OPTIONS] [-- EXTRA HYENA ARGS]
#   or by hand: the array, then (once every task has succeeded) the merge:
#     sbatch --array=1-N array.sh [OPTIONS] [-- EXTRA HYENA ARGS]
#     array.sh --merge [OPTIONS]            (or: sbatch array.sh --merge [OPTIONS])
#
# Options (each also read from the environment variable in brackets):
#   --mode embed|score|vep   what to run                                   [HYENA_MODE]
#   --model DIR              model directory                               [HYENA_MODEL]
#   --fasta FA               records, for embed and score                  [HYENA_FASTA]
#   --reference FA           reference genome, for vep                     [HYENA_REFERENCE]
#   --variants FILE          VCF or TSV of `chrom pos ref alt [id]`, vep   [HYENA_VARIANTS]
#   --out FILE               the final merged output (.npy/.jsonl/.tsv)    [HYENA_OUT]
#   --shards N               number of shards; in an array of 1-N it may be left out
#                                                                          [HYENA_SHARDS]
#   --work DIR               folder of the shard outputs [default: OUT.shards]  [HYENA_WORK]
#   --per-base FILE          score only: per-base TSV, merged like the rest [HYENA_PER_BASE]
#   --extra "ARGS"           extra hyena arguments, split at spaces; arguments after `--`
#                            are passed as they are                        [HYENA_EXTRA]
#   --hyena PATH             the hyena binary [default: hyena on PATH]     [HYENA]
#   --task I                 run shard I here (without Slurm, or to redo one shard)
#   --sbatch "OPTS"          with --submit: options for both sbatch calls, e.g.
#                            "--partition=short --account=lab"             [HYENA_SBATCH]
#   -h, --help               this text
#
# Threads: the shard uses SLURM_CPUS_PER_TASK threads (RAYON_NUM_THREADS), so ask for CPUs with
# --cpus-per-task (default below). Resume: a shard works in OUT.partial and renames it when done;
# a task that was killed (time limit, preemption) resumes from there when run again, and a
# finished one exits at once without touching its files, so resubmitting the whole array
# (or only the failed tasks, e.g. --array=2,5, with --shards N) is safe.
#
# Example (embed, 3 shards):
#   workflows/slurm/array.sh --submit --mode embed --model tests/fixtures/hyenadna/tiny-hf \
#       --fasta seqs.fa --out results/emb.npy --shards 3 -- --pool mean
#
# Defaults for every task; sbatch command-line options override these lines.
#SBATCH --job-name=hyena-shard
#SBATCH --cpus-per-task=4
#SBATCH --mem=8G
#SBATCH --time=04:00:00
#SBATCH --output=%x-%A_%a.out
set -euo pipefail

usage() {
    # When sbatch runs this file it is a copy in Slurm's spool folder; the text is the same.
    sed -n '2,/^# Defaults for every task/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}
die() {
    echo "array.sh: $*" >&2
    exit 2
}

mode=${HYENA_MODE:-}
model=${HYENA_MODEL:-}
fasta=${HYENA_FASTA:-}
reference=${HYENA_REFERENCE:-}
variants=${HYENA_VARIANTS:-}
out=${HYENA_OUT:-}
shards=${HYENA_SHARDS:-}
work=${HYENA_WORK:-}
per_base=${HYENA_PER_BASE:-}
extra=${HYENA_EXTRA:-}
hyena=${HYENA:-hyena}
sbatch_opts=${HYENA_SBATCH:-}
action=shard
task=""
passthrough=()
forward=() # the options, as given, for the jobs --submit makes

while [ $# -gt 0 ]; do
    case "$1" in
        -h | --help)
            usage
            exit 0
            ;;
        --submit) action=submit; shift; continue ;;
        --merge) action=merge; shift; continue ;;
        --)
            shift
            passthrough=("$@")
            break
            ;;
    esac
    [ $# -ge 2 ] || die "$1 needs a value (try --help)"
    case "$1" in
        --mode) mode=$2 ;;
        --model) model=$2 ;;
        --fasta) fasta=$2 ;;
        --reference) reference=$2 ;;
        --variants) variants=$2 ;;
        --out) out=$2 ;;
        --shards) shards=$2 ;;
        --work) work=$2 ;;
        --per-base) per_base=$2 ;;
        --extra) extra=$2 ;;
        --hyena) hyena=$2 ;;
        --task) task=$2 ;;
        --sbatch) sbatch_opts=$2; shift 2; continue ;;
        *) die "unknown option '$1' (try --help)" ;;
    esac
    forward+=("$1" "$2")
    shift 2
done

case "$mode" in
    embed) suffix=.npy ;;
    score) suffix=.jsonl ;;
    vep) suffix=.tsv ;;
    "") die "give --mode embed|score|vep (or HYENA_MODE)" ;;
    *) die "mode '$mode': use embed, score or vep" ;;
esac
[ -n "$out" ] || die "give --out FILE (the final merged output)"
[ -n "$per_base" ] && [ "$mode" != score ] && die "--per-base is for score only"

# N: given, or the size of an array 1-N.
if [ -z "$shards" ] && [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then
    if [ "${SLURM_ARRAY_TASK_MIN:-}" = 1 ] \
        && [ "${SLURM_ARRAY_TASK_COUNT:-}" = "${SLURM_ARRAY_TASK_MAX:-}" ]; then
        shards=$SLURM_ARRAY_TASK_MAX
    else
        die "the array is not 1-N (tasks ${SLURM_ARRAY_TASK_MIN:-?}-${SLURM_ARRAY_TASK_MAX:-?}); give --shards N"
    fi
fi
[ -n "$shards" ] || die "give --shards N (or submit as --array=1-N)"
[[ "$shards" =~ ^[1-9][0-9]*$ ]] || die "--shards '$shards': a whole number >= 1"
[ -n "$work" ] || work=$out.shards

shard_out() { printf '%s/shard-%s-of-%s%s' "$work" "$1" "$shards" "$suffix"; }

merge_cmd=("$hyena" merge --out "$out")
[ -n "$per_base" ] && merge_cmd+=(--per-base "$per_base")
for ((i = 1; i <= shards; i++)); do merge_cmd+=("$(shard_out "$i")"); done

case "$action" in
    submit)
        command -v sbatch >/dev/null || die "sbatch not found: --submit needs Slurm"
        self=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
        read -r -a sb <<<"$sbatch_opts"
        extra_fwd=()
        [ ${#passthrough[@]} -gt 0 ] && extra_fwd=(-- "${passthrough[@]}")
        # The settings travel as arguments; --hyena as an absolute path where it is one here.
        array_id=$(sbatch --parsable --array="1-$shards" "${sb[@]}" "$self" \
            "${forward[@]}" --shards "$shards" "${extra_fwd[@]}")
        array_id=${array_id%%;*}
        merge_id=$(sbatch --parsable --dependency="afterok:$array_id" --kill-on-invalid-dep=yes \
            --job-name=hyena-merge --cpus-per-task=1 --output="hyena-merge-%j.out" \
            "${sb[@]}" "$self" --merge "${forward[@]}" --shards "$shards")
        merge_id=${merge_id%%;*}
        echo "array job $array_id: $shards shard(s) under $work/"
        echo "merge job $merge_id (after every shard succeeds): $out"
        echo "if a shard fails: fix it, then resubmit the same command (finished shards are skipped)"
        exit 0
        ;;
    merge)
        mkdir -p "$(dirname "$out")"
        echo "+ ${merge_cmd[*]}" >&2
        exec "${merge_cmd[@]}"
        ;;
esac

# One shard.
i=${task:-${SLURM_ARRAY_TASK_ID:-}}
[ -n "$i" ] || die "no shard to run: submit with sbatch --array=1-N, or give --task I (or --submit)"
if ! [[ "$i" =~ ^[0-9]+$ ]] || [ "$i" -lt 1 ] || [ "$i" -gt "$shards" ]; then
    die "shard $i is outside 1..$shards"
fi
[ -n "$model" ] || die "give --model DIR"
cmd=("$hyena" "$mode" --model "$model")
if [ "$mode" = vep ]; then
    if [ -z "$reference" ] || [ -z "$variants" ]; then
        die "vep needs --reference and --variants"
    fi
    cmd+=(--reference "$reference" --variants "$variants")
else
    [ -n "$fasta" ] || die "$mode needs --fasta"
    cmd+=(--fasta "$fasta")
fi
this=$(shard_out "$i")
cmd+=(--out "$this" --shard "$i/$shards")
[ -n "$per_base" ] && cmd+=(--per-base "$this.per-base.tsv")
if [ -n "$extra" ]; then
    read -r -a extra_words <<<"$extra"
    cmd+=("${extra_words[@]}")
fi
[ ${#passthrough[@]} -gt 0 ] && cmd+=("${passthrough[@]}")

mkdir -p "$work"
if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then
    export RAYON_NUM_THREADS=$SLURM_CPUS_PER_TASK
fi
echo "+ ${cmd[*]}" >&2
"${cmd[@]}"
echo "shard $i/$shards done: $this" >&2
echo "after every shard: ${merge_cmd[*]}" >&2
