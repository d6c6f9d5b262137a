#!/usr/bin/env python3
"""Evo 2 side by side: hyena and the reference (vortex, through evo2_reference_bench.py) scoring
the same sequence with the same random-weight checkpoint, in alternating rounds, medians
reported.

Each round runs both programs once, each in a fresh process, one after the other; the order
alternates between rounds (reference first in rounds 1, 3, ...; hyena first in 2, 4, ...), so a
slow spell of a shared machine does not fall on one side only. Reported per side: the median
over rounds of

  reference  build_s + load_s (constructing vortex's model and loading the .pt), forward_s
             (one full forward), total_s (the child process's wall time), peak_rss_gib
  hyena      load_s ("model loaded in" on stderr), score_s (the rest: tokenising, the
             forward, the log-likelihoods), total_s (wall time), peak_rss_gib (ru_maxrss of
             the child)

and the ratios reference/hyena of the forward (hyena's score_s against the reference's
forward_s plus its loglik_s) and of the totals, with every round's numbers in the JSON.

Before the rounds, in the same run: torch's GEMM throughput (evo2_reference_bench.py
gemm-peak: square f32 and bf16 matmuls) and hyena's own products at the model's MLP shape
(`hyena bench products`), for "fraction of the machine's peak" figures; the matrix-product
work of one forward (linear layers, unembedding, causal attention's two products) divided by
each side's forward time gives its achieved GFLOP/s.

Usage (after `make-weights`, see evo2_reference_bench.py; hyena built with
`cargo build --release`):

    python3 bench/evo2_side_by_side.py --dir runs/evo2-1b-random --len 8192 \\
        --precision bf16 --rounds 3 --out bench/out/evo2-1b-bf16-8192.json

`--skip-reference` runs hyena only (for shapes whose reference does not fit in memory).
`--reference-rss-limit-gib G` watches the reference's process tree (resident set from /proc,
every 0.2 s) and stops it when it passes G GiB, recording how far it got: to show that a shape
does not fit without letting the kernel's out-of-memory killer loose on the machine.
"""

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REF = os.path.join(HERE, "evo2_reference_bench.py")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def write_fasta(path, length, seed):
    rng = random.Random(seed)
    seq = "".join(rng.choice("ACGT") for _ in range(length))
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(f">random-{length}-seed{seed}\n")
        for i in range(0, length, 80):
            f.write(seq[i:i + 80] + "\n")
    os.replace(tmp, path)


def tree_rss_bytes(pid):
    """Resident bytes of `pid` and all its descendants (Linux /proc)."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(d))
        except (OSError, ValueError, IndexError):
            pass
    total, stack, page = 0, [pid], os.sysconf("SC_PAGE_SIZE")
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * page
        except (OSError, ValueError, IndexError):
            pass
        stack += children.get(p, [])
    return total


def run_reference(a, fasta):
    argv = [sys.executable, REF, "run", "--dir", a.dir, "--fasta", fasta,
            "--precision", a.precision, "--threads", str(a.threads), "--json"]
    t0 = time.perf_counter()
    if a.reference_rss_limit_gib:
        import signal
        limit = a.reference_rss_limit_gib * 1024.0**3
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True, start_new_session=True)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, tree_rss_bytes(proc.pid))
            if peak > limit:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return {"stopped_at_rss_limit": True, "rss_limit_gib": a.reference_rss_limit_gib,
                        "max_rss_gib": peak / 1024.0**3,
                        "elapsed_s": time.perf_counter() - t0}
            time.sleep(0.2)
        out = proc.stdout.read()
        if proc.returncode != 0:
            raise SystemExit(f"the reference run failed (exit status {proc.returncode})")
        p = types_ns(stdout=out)
    else:
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if p.returncode != 0:
            log(p.stderr[-3000:])
            raise SystemExit(f"the reference run failed (exit status {p.returncode})")
    wall = time.perf_counter() - t0
    r = json.loads(p.stdout.strip().splitlines()[-1])
    return {
        "build_load_s": r["build_s"] + r["load_s"],
        "forward_s": r["forward_s"] + r.get("loglik_s", 0.0),
        "total_s": wall,
        "peak_rss_gib": r["peak_rss_gib"],
        "loglik_sum": r["loglik_sum"],
    }


def types_ns(**kw):
    import types
    return types.SimpleNamespace(**kw)


def run_hyena(a, fasta):
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    argv = [a.hyena, "score", "--model", a.dir, "--fasta", fasta, "--json",
            "--precision", a.precision]
    # A wrapper process, so that ru_maxrss of its children is this run's alone.
    wrapper = ("import resource, subprocess, sys, time\n"
               "t0 = time.perf_counter()\n"
               "p = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)\n"
               "w = time.perf_counter() - t0\n"
               "sys.stdout.write(p.stdout)\n"
               "sys.stderr.write(p.stderr)\n"
               "sys.stderr.write('\\nWRAP %d %.4f %d\\n' % (p.returncode, w, "
               "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n")
    p = subprocess.run([sys.executable, "-c", wrapper] + argv, env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wrap = [ln for ln in p.stderr.splitlines() if ln.startswith("WRAP ")][-1].split()
    rc, wall, maxrss_kib = int(wrap[1]), float(wrap[2]), int(wrap[3])
    if rc != 0:
        log(p.stderr[-3000:])
        raise SystemExit(f"the hyena run failed (exit status {rc})")
    load = [float(ln.split()[3]) for ln in p.stderr.splitlines()
            if ln.startswith("model loaded in")][-1]
    row = json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1])
    return {
        "load_s": load,
        "score_s": wall - load,
        "total_s": wall,
        "peak_rss_gib": maxrss_kib / 1024.0 / 1024.0,
        "loglik_sum": row["log_likelihood"],
    }


def gemm_peak(a):
    p = subprocess.run([sys.executable, REF, "gemm-peak", "--threads", str(a.threads), "--json"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        log(p.stderr[-2000:])
        return {}
    return json.loads(p.stdout.strip().splitlines()[-1])


def matmul_flops(config_yml, length):
    """Floating-point operations of the matrix products of one forward over `length` tokens."""
    import yaml
    with open(config_yml) as f:
        c = yaml.safe_load(f)
    d, n, layers, v = c["hidden_size"], c["inner_mlp_size"], c["num_layers"], c["vocab_size"]
    attn = len(c["attn_layer_idxs"])
    per_token = layers * (4 * d * d + 3 * d * n) + v * d
    # q·kᵀ and p·v over the causal half: 2 products × 2 flops × L²/2 × D per attention block.
    return 2.0 * length * per_token + attn * 2.0 * length * length * d, d, n


def hyena_products(a, k, n):
    p = subprocess.run([a.hyena, "bench", "products", "--m", "1024", "--k", str(k), "--n", str(n),
                        "--threads", str(a.threads), "--json"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        log(p.stderr[-2000:])
        return {}
    return json.loads(p.stdout.strip().splitlines()[-1])


def med(rows, key):
    return statistics.median(r[key] for r in rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--dir", required=True, help="vortex config.yml + .pt (from make-weights)")
    ap.add_argument("--len", type=int, default=8192, help="bases scored")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random sequence")
    ap.add_argument("--precision", choices=("bf16", "f32"), default="bf16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--hyena", default=os.path.join(HERE, "..", "target", "release", "hyena"),
                    help="the hyena binary")
    ap.add_argument("--skip-reference", action="store_true",
                    help="run hyena only (the reference does not fit in memory)")
    ap.add_argument("--skip-gemm-peak", action="store_true")
    ap.add_argument("--reference-rss-limit-gib", type=float, default=None,
                    help="stop the reference when its resident set passes this (see above)")
    ap.add_argument("--out", default=None, help="write the JSON here as well")
    a = ap.parse_args()

    fasta = os.path.join(a.dir, f"random-dna-L{a.len}-seed{a.seed}.fa")
    if not os.path.exists(fasta):
        write_fasta(fasta, a.len, a.seed)
    res = {"dir": a.dir, "len": a.len, "precision": a.precision, "threads": a.threads,
           "rounds": [], "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    flops, d, n = matmul_flops(os.path.join(a.dir, "config.yml"), a.len)
    res["matmul_tflop"] = flops / 1e12
    if not a.skip_gemm_peak:
        res["torch_gemm_peak"] = gemm_peak(a)
        log(f"torch GEMM peak: {res['torch_gemm_peak']}")
        res["hyena_products"] = hyena_products(a, d, n)
        log(f"hyena products: {res['hyena_products']}")
    for r in range(a.rounds):
        order = ["reference", "hyena"] if r % 2 == 0 else ["hyena", "reference"]
        if a.skip_reference:
            order = ["hyena"]
        row = {}
        for side in order:
            row[side] = run_reference(a, fasta) if side == "reference" else run_hyena(a, fasta)
            log(f"round {r + 1} {side}: {json.dumps(row[side])}")
        res["rounds"].append(row)
    hy = [row["hyena"] for row in res["rounds"]]
    summary = {"hyena": {k: med(hy, k) for k in hy[0]}}
    summary["hyena"]["matmul_gflops"] = flops / summary["hyena"]["score_s"] / 1e9
    stopped = any(row.get("reference", {}).get("stopped_at_rss_limit") for row in res["rounds"])
    if not a.skip_reference and not stopped:
        ref = [row["reference"] for row in res["rounds"]]
        summary["reference"] = {k: med(ref, k) for k in ref[0]}
        summary["reference"]["matmul_gflops"] = flops / summary["reference"]["forward_s"] / 1e9
        summary["forward_ratio"] = summary["reference"]["forward_s"] / summary["hyena"]["score_s"]
        summary["total_ratio"] = summary["reference"]["total_s"] / summary["hyena"]["total_s"]
        summary["rss_ratio"] = summary["reference"]["peak_rss_gib"] / summary["hyena"]["peak_rss_gib"]
        summary["loglik_rel_diff"] = abs(summary["hyena"]["loglik_sum"] - summary["reference"]["loglik_sum"]) / abs(summary["reference"]["loglik_sum"])
    res["median"] = summary
    text = json.dumps(res, indent=1)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        tmp = a.out + ".tmp"
        with open(tmp, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, a.out)
    print(text)


if __name__ == "__main__":
    main()
