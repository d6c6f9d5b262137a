#!/usr/bin/env python3
"""Generation speed, side by side: hyena's recurrent decoding (`hyena generate`) against the
reference's own cached generation (vortex's Generator, through `evo2_reference_bench.py run
--generate`), greedy, same prompt, same machine, rounds alternating, medians reported.

Each round runs the reference, then hyena, each in a fresh process: load, prefill the prompt
by the parallel forward, then N tokens one cached step at a time. Reported per engine: load
time, prefill time, decode tokens per second (prefill excluded), peak RSS, and how many of the
greedy tokens agree between the two (random weights make near-ties common in bf16, so
agreement is reported, not required).

    python3 bench/evo2_generate_side_by_side.py --dir DIR [--prompt-len 512] [--tokens 64]
        [--precision bf16] [--rounds 3] [--skip-reference] [--out results.json]

DIR holds a released-layout model (config.yml + NAME.pt; `evo2_reference_bench.py
make-weights` writes random ones). hyena is `target/release/hyena` (build it first).
"""

import argparse
import json
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
HYENA = os.path.join(ROOT, "target", "release", "hyena")


def run_reference(a, fasta):
    cmd = [sys.executable, os.path.join(HERE, "evo2_reference_bench.py"), "run", "--dir", a.dir,
           "--fasta", fasta, "--precision", a.precision, "--threads", str(a.threads),
           "--generate", str(a.tokens), "--json"]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if p.returncode != 0:
        sys.exit("the reference run failed")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    return {"load_s": r["load_s"], "prefill_s": r["prefill_s"],
            "decode_tokens_per_s": r["decode_tokens_per_s"], "peak_rss_gib": r["peak_rss_gib"],
            "ids": r["ids"]}


def run_hyena(a, prompt):
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    cmd = ["/usr/bin/time", "-f", "MAXRSS %M", HYENA, "generate", "--model", a.dir, "--prompt",
           prompt, "--tokens", str(a.tokens), "--temperature", "0", "--precision", a.precision,
           "--json"]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if p.returncode != 0:
        sys.exit("hyena failed:\n" + p.stderr)
    err = p.stderr
    load = float(re.search(r"model loaded in ([0-9.]+) s", err).group(1))
    m = re.search(r"prefill of \d+ tokens ([0-9.]+) s; (\d+) tokens after it in ([0-9.]+) s", err)
    prefill, steps, step_s = float(m.group(1)), int(m.group(2)), float(m.group(3))
    rss = int(re.search(r"MAXRSS (\d+)", err).group(1)) * 1024
    ids = json.loads(p.stdout.strip().splitlines()[-1])["ids"]
    return {"load_s": load, "prefill_s": prefill, "decode_tokens_per_s": steps / step_s,
            "peak_rss_gib": round(rss / 2**30, 3), "ids": ids}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--precision", choices=("bf16", "f32"), default="bf16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-reference", action="store_true",
                    help="hyena only (shapes the reference cannot hold in memory)")
    ap.add_argument("--out", default=None, help="write every round and the medians as JSON")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    prompt = "".join(rng.choice("ACGT") for _ in range(a.prompt_len))
    fasta = os.path.join(a.dir, f"prompt-L{a.prompt_len}-seed{a.seed}.fa")
    with open(fasta, "w") as f:
        f.write(f">prompt\n{prompt}\n")
    rounds = {"reference": [], "hyena": []}
    for r in range(a.rounds):
        if not a.skip_reference:
            rounds["reference"].append(run_reference(a, fasta))
            print(f"round {r + 1} reference: {rounds['reference'][-1]['decode_tokens_per_s']:.3f} tok/s",
                  flush=True)
        rounds["hyena"].append(run_hyena(a, prompt))
        print(f"round {r + 1} hyena:     {rounds['hyena'][-1]['decode_tokens_per_s']:.3f} tok/s",
              flush=True)
    med = {}
    for eng, rs in rounds.items():
        if rs:
            med[eng] = {k: statistics.median(x[k] for x in rs)
                        for k in ("load_s", "prefill_s", "decode_tokens_per_s", "peak_rss_gib")}
    print(f"\n{a.precision}, prompt {a.prompt_len}, {a.tokens} tokens, {a.threads} threads, "
          f"medians of {a.rounds}")
    print("| engine | load s | prefill s | decode tokens/s | peak RSS GiB |\n|---|---:|---:|---:|---:|")
    for eng, m in med.items():
        print(f"| {eng} | {m['load_s']:.1f} | {m['prefill_s']:.2f} | "
              f"{m['decode_tokens_per_s']:.3f} | {m['peak_rss_gib']:.2f} |")
    if "reference" in med:
        ratio = med["hyena"]["decode_tokens_per_s"] / med["reference"]["decode_tokens_per_s"]
        ref_ids, our_ids = rounds["reference"][0]["ids"], rounds["hyena"][0]["ids"]
        agree = next((i for i, (x, y) in enumerate(zip(ref_ids, our_ids)) if x != y),
                     min(len(ref_ids), len(our_ids)))
        print(f"decode speed-up {ratio:.2f}x; greedy tokens agree for the first {agree} of "
              f"{len(ref_ids)}")
        med["speedup_decode"] = ratio
        med["tokens_agree"] = agree
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"args": vars(a), "rounds": rounds, "medians": med}, f, indent=1)


if __name__ == "__main__":
    main()
