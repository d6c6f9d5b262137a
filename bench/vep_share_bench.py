#!/usr/bin/env python3
"""Variant-effect scoring with and without the shared prefix, side by side: `hyena vep`
against `hyena vep --no-share` on the same variants, same model, same machine.

A random chromosome (seeded) and a VCF with every alternative allele at `--positions`
positions (three SNVs each, as in a saturation-mutagenesis set such as Evo 2's BRCA1
example) are written to a scratch directory. The shared run scores all of them; the naive run
scores the first `--naive` variants (each is two full windows, so a few give its per-variant
time). Reported: seconds per variant for each, the ratio, and the largest difference between
the two runs' scores on the variants both scored.

    python3 bench/vep_share_bench.py --model DIR [--window 8192] [--positions 1] [--naive 1]
        [--precision bf16] [--work /tmp/vep-bench]
"""

import argparse
import os
import random
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
HYENA = os.path.join(os.path.dirname(HERE), "target", "release", "hyena")


def run(a, vcf, out, extra):
    cmd = [HYENA, "vep", "--model", a.model, "--reference", a.fasta, "--variants", vcf,
           "--out", out, "--window", str(a.window), "--precision", a.precision, "--force"] + extra
    p = subprocess.run(cmd, stderr=subprocess.PIPE, text=True,
                       env=dict(os.environ, RAYON_NUM_THREADS=str(a.threads)))
    if p.returncode != 0:
        sys.exit(p.stderr)
    m = re.search(r"(\d+) variants scored in ([0-9.]+) s", p.stderr)
    rows = [l.split("\t") for l in open(out) if not l.startswith("#")]
    return int(m.group(1)), float(m.group(2)), rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--window", type=int, default=8192)
    ap.add_argument("--positions", type=int, default=1)
    ap.add_argument("--naive", type=int, default=1, help="variants the naive run scores")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="/tmp/vep-bench")
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    rng = random.Random(0)
    n = 2 * a.window + 100 * a.positions
    seq = "".join(rng.choice("ACGT") for _ in range(n))
    a.fasta = os.path.join(a.work, "chr.fa")
    with open(a.fasta, "w") as f:
        f.write(">chrB\n" + "\n".join(seq[i:i + 80] for i in range(0, n, 80)) + "\n")
    lines = ["##fileformat=VCFv4.2", "#CHROM\tPOS\tID\tREF\tALT"]
    for k in range(a.positions):
        p = a.window + 1 + 97 * k
        r = seq[p - 1]
        lines.append(f"chrB\t{p}\t.\t{r}\t{','.join(b for b in 'ACGT' if b != r)}")
    vcf = os.path.join(a.work, "all.vcf")
    with open(vcf, "w") as f:
        f.write("\n".join(lines) + "\n")
    # The naive run's variants: the first `--naive` of the same records.
    nv = os.path.join(a.work, "naive.vcf")
    with open(nv, "w") as f:
        alts = [l for l in lines[2:]]
        out, left = lines[:2], a.naive
        for l in alts:
            cols = l.split("\t")
            keep = cols[4].split(",")[:left]
            left -= len(keep)
            if keep:
                out.append("\t".join(cols[:4] + [",".join(keep)]))
            if left <= 0:
                break
        f.write("\n".join(out) + "\n")
    ns, ts, shared = run(a, vcf, os.path.join(a.work, "shared.tsv"), [])
    nn, tn, naive = run(a, nv, os.path.join(a.work, "naive.tsv"), ["--no-share"])
    diff = max(abs(float(x[c]) - float(y[c])) for x, y in zip(shared, naive) for c in (7, 8, 9))
    print(f"window {a.window}, {a.precision}, {a.threads} threads")
    print(f"shared: {ns} variants in {ts:.1f} s, {ts / ns:.2f} s per variant")
    print(f"naive:  {nn} variants in {tn:.1f} s, {tn / nn:.2f} s per variant")
    print(f"speed-up per variant {(tn / nn) / (ts / ns):.2f}x; max |score difference| {diff:.2e}")


if __name__ == "__main__":
    main()
