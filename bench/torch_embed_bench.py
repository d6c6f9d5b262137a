"""PyTorch (CPU, float32) baseline for `hyena bench embed`: the forward of a HyenaDNA-shaped
causal LM (random weights) on one sequence, to the final hidden states, under
torch.inference_mode().

The model is the one of tests/fixtures/hyenadna/make_hyenadna_fixtures.py (our own PyTorch
HyenaDNA: embeddings, pre-norm Hyena + MLP blocks, ln_f; the Hyena operator computes like the
reference: in_proj, transpose to [B, C, L], depthwise short conv, implicit filter MLP over the
positional grid, FFT convolution with n = 2L, out_proj), with HyenaDNA-large's shape by
default: d_model 256, 8 layers, d_inner 1024, emb_dim 5, filter_order 64, l_max = L + 2.

Every length runs in a fresh subprocess with an address-space limit (--mem-limit-gib), so that
a length that does not fit fails with an out-of-memory error instead of bringing the machine
down. Reported: wall time of one forward after a warm-up at a short length (both sides pay
first-touch page faults on their large buffers: hyena's workspace is fresh per length too),
and the subprocess's peak resident memory (ru_maxrss) including the model and interpreter.

  python3 bench/torch_embed_bench.py --lengths 65536,262144,1000000 [--json]
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(L, d, n_layer, threads):
    import torch
    torch.set_num_threads(threads)
    sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures", "hyenadna"))
    sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures"))
    from make_hyenadna_fixtures import Backbone
    torch.manual_seed(0)
    m = Backbone(d=d, n_layer=n_layer, d_inner=4 * d, l_max=L + 2, filter_order=64).eval()
    ids = torch.randint(7, 11, (1, L))
    with torch.inference_mode():
        m(ids[:, :1024], keep_states=False)  # warm-up: kernels, FFT plans
        t = time.perf_counter()
        _, h = m(ids, keep_states=False)
        sec = time.perf_counter() - t
    assert torch.isfinite(h).all()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"length": L, "d_model": d, "n_layer": n_layer, "seconds": sec,
                      "bases_per_s": L / sec, "peak_rss_mib": rss, "threads": threads}))


def main():
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", default="16384,65536")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--threads", type=int, default=ncpu)
    p.add_argument("--mem-limit-gib", type=float, default=20.0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a.child, a.dim, a.layers, a.threads)
        return
    if not a.json:
        print(f"PyTorch embed forward: D={a.dim} layers={a.layers} threads={a.threads}\n")
        print("| L | seconds | bases/s | peak resident MiB |\n|---:|---:|---:|---:|")
    for L in [int(x) for x in a.lengths.split(",")]:
        lim = int(a.mem_limit_gib * 2**30)

        def limit():
            resource.setrlimit(resource.RLIMIT_AS, (lim, lim))

        r = subprocess.run([sys.executable, __file__, "--child", str(L), "--dim", str(a.dim),
                            "--layers", str(a.layers), "--threads", str(a.threads)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           preexec_fn=limit)
        recs = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
        if r.returncode != 0 or not recs:
            err = (r.stderr.strip().splitlines() or ["?"])[-1]
            rec = {"length": L, "error": f"failed under a {a.mem_limit_gib:g} GiB limit: {err}"}
        else:
            rec = recs[0]
        if a.json:
            print(json.dumps(rec), flush=True)
        elif "error" in rec:
            print(f"| {L} | {rec['error']} | | |", flush=True)
        else:
            print(f"| {L} | {rec['seconds']:.2f} | {rec['bases_per_s']:.0f} | "
                  f"{rec['peak_rss_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
