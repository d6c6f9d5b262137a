#!/usr/bin/env python3
"""Peak memory of `hyena score` on one long random DNA record, for each length and key/value
cache precision: the resident-set peak of the process (the kernel's count, from wait4), its
wall time, and the terms of the memory formula beside it.

A 131,072-base score at the full `evo2_7b` shape costs hours of CPU on a small machine, and its
memory does not need all 32 blocks: `score` runs block after block over the residual stream,
so its working set (residual stream `[L, D]` f32, one attention block's keys and values
`2 L D` in the cache precision, logits `[L, V]`, chunk buffers) is the same for 4 blocks as for
32 as long as one attention block is among them. `--full-model DIR` therefore runs a model made
of the first blocks of a release shape (`evo2_reference_bench.py make-weights --layers 4`:
blocks 0-3, the fourth being attention) and adds the weights of the blocks it lacks (the
difference of the two checkpoint files' tensor bytes) as a separate, labelled column;
`--check-full LEN` measures the full model at a short length to test that sum.

    python3 bench/evo2_score_memory.py --model DIR [--lengths 32768,131072] [--kv bf16,f32]
        [--precision bf16] [--full-model DIR] [--check-full 2048] [--json-out FILE]
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
HYENA = os.path.join(os.path.dirname(HERE), "target", "release", "hyena")
GIB = 1 << 30


def read_config(d):
    import yaml

    with open(os.path.join(d, "config.yml")) as f:
        return yaml.safe_load(f)


def checkpoint_bytes(d):
    """Bytes of the checkpoint files of a model directory (.pt or .safetensors)."""
    return sum(os.path.getsize(os.path.join(d, n)) for n in os.listdir(d)
               if n.endswith((".pt", ".safetensors")) or ".pt.part" in n)


def write_record(path, length, seed):
    rng = random.Random(seed)
    seq = "".join(rng.choice("ACGT") for _ in range(length))
    with open(path, "w") as f:
        f.write(f">random{length}\n")
        for i in range(0, length, 80):
            f.write(seq[i:i + 80] + "\n")


def measure(a, model, fasta, kv):
    """Run `hyena score` once; returns (peak RSS bytes, wall seconds, parsed JSON)."""
    cmd = [HYENA, "score", "--model", model, "--fasta", fasta, "--precision", a.precision,
           "--kv", kv, "--chunk", str(a.chunk), "--json"]
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out, err = p.communicate()
    # communicate() has reaped the child; its rusage is folded into RUSAGE_CHILDREN, which
    # holds the largest child peak so far. Runs are ordered by growing size, but to be exact
    # each run is measured in a fresh python process (see main).
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{err.decode(errors='replace')}")
    import resource

    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return peak, wall, json.loads(out)


def formula(cfg, length, kv, chunk, n_attn):
    """The terms of the working set beyond the weights (bytes); `n_attn` attention blocks hold
    a cache each when a sequence is streamed position by position (generation)."""
    d, v, n = cfg["hidden_size"], cfg["vocab_size"], cfg["inner_mlp_size"]
    kv_b = 2 if kv == "bf16" else 4
    p = min(chunk, length)
    return {
        "residual": 4 * length * d,
        "kv_one_block": 2 * length * d * kv_b if cfg["attn_layer_idxs"] else 0,
        "kv_all_blocks": n_attn * 2 * length * d * kv_b,
        "logits": 4 * length * v,
        "chunk": 4 * p * (10 * d + 2 * n),
    }


def one(a):
    """Child mode: one measurement, printed as JSON (a fresh process per run keeps each
    RUSAGE_CHILDREN peak its own)."""
    with tempfile.TemporaryDirectory() as tmp:
        fasta = os.path.join(tmp, "record.fa")
        write_record(fasta, a.length, a.seed)
        peak, wall, res = measure(a, a.model, fasta, a.one)
    print(json.dumps({"peak": peak, "wall": wall, "result": res}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", required=True, help="Evo 2 model directory")
    ap.add_argument("--lengths", default="32768,131072", help="record lengths (bases)")
    ap.add_argument("--kv", default="bf16,f32", help="key/value cache precisions to run")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--full-model", help="the full release-shape model whose missing blocks' "
                    "weights are added to the measured peak (a labelled column)")
    ap.add_argument("--check-full", type=int, default=0,
                    help="also measure --full-model itself at this length (0: no)")
    ap.add_argument("--json-out", help="write the rows here as JSON")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--length", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        return one(a)
    if not os.path.exists(HYENA):
        sys.exit(f"{HYENA} is missing: cargo build --release -p hyena-cli")

    def child(model, length, kv):
        cmd = [sys.executable, os.path.abspath(__file__), "--model", model, "--one", kv,
               "--length", str(length), "--precision", a.precision, "--chunk", str(a.chunk),
               "--threads", str(a.threads), "--seed", str(a.seed)]
        p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if p.returncode != 0:
            sys.exit(p.returncode)
        return json.loads(p.stdout)

    n_attn = len(read_config(a.full_model or a.model)["attn_layer_idxs"])
    own = checkpoint_bytes(a.model)
    missing = checkpoint_bytes(a.full_model) - own if a.full_model else 0
    rows = []
    runs = [(a.model, int(x), kv) for x in a.lengths.split(",") for kv in a.kv.split(",")]
    if a.full_model and a.check_full:
        runs = [(a.full_model, a.check_full, a.kv.split(",")[0]),
                (a.model, a.check_full, a.kv.split(",")[0])] + runs
    for model, length, kv in runs:
        print(f"score {length} bases, kv {kv}, {os.path.basename(model.rstrip('/'))} ...",
              file=sys.stderr, flush=True)
        r = child(model, length, kv)
        terms = formula(read_config(model), length, kv, a.chunk, n_attn)
        row = {
            "model": model, "layers": read_config(model)["num_layers"], "length": length,
            "kv": kv, "precision": a.precision, "wall_s": round(r["wall"], 1),
            "peak_gib": round(r["peak"] / GIB, 3),
            "checkpoint_gib": round(checkpoint_bytes(model) / GIB, 3),
            "terms_gib": {k: round(v / GIB, 3) for k, v in terms.items()},
        }
        if model == a.model and missing:
            row["plus_missing_blocks_gib"] = round((r["peak"] + missing) / GIB, 3)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)

    print("| model | bases | KV cache | peak RSS (GiB) | + weights of the missing blocks (GiB)"
          " | residual | KV, one block | KV, all blocks (stream) | logits | wall (s) |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        t = r["terms_gib"]
        print(f"| {r['layers']} blocks | {r['length']} | {r['kv']} | {r['peak_gib']:.2f} | "
              f"{r.get('plus_missing_blocks_gib', float('nan')):.2f} | {t['residual']:.2f} | "
              f"{t['kv_one_block']:.2f} | {t['kv_all_blocks']:.2f} | {t['logits']:.2f} | "
              f"{r['wall_s']:.0f} |")
    if a.json_out:
        tmp = a.json_out + ".partial"
        with open(tmp, "w") as f:
            json.dump(rows, f, indent=1)
        os.replace(tmp, a.json_out)


if __name__ == "__main__":
    main()
