"""PyTorch (CPU, float32) baseline for `hyena bench`.

Ops:
  conv      fftconv(u, k, Dskip), u (B, D, L), k (D, L), Dskip (D,), all requiring grad.
  operator  HyenaOperator(d_model=D, l_max=L, order, emb_dim=3, filter_order=64), input (B, L, D).
Timings: `fwd` is a forward under torch.no_grad(); `fwdbwd` is a forward with grad
enabled plus y.backward(g) with a preallocated random g (grads reset with set_to_none).
Each is the median over `reps` runs after one warm-up.

Memory: every (op, L) runs in a fresh subprocess.  ru_maxrss is read after importing
torch and a tiny warm-up fwd+bwd of the same op (one-time start-up costs), but before
allocating anything; then again after building inputs/parameters and one fwd+bwd.
peak_mib = the difference: the peak resident memory added by the computation (inputs,
parameters, activations, gradients).  This is done before any timing.
"""
import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fft_flops(n):
    return 2.5 * n * math.log2(n)


def conv_flops(B, D, L):
    """Forward flops of fftconv: per (batch, channel) an rfft of u and an irfft (n = 2L,
    2.5 n log2 n each) plus 8 flops per frequency bin (L+1 bins); plus one filter FFT per
    channel.  fwd+bwd is counted as 3x fwd."""
    n = 2 * L
    return B * D * (2 * fft_flops(n) + 8 * (L + 1)) + D * fft_flops(n)


def operator_flops(B, D, L, order, E=3, F=64):
    """Forward flops of the Hyena operator: in/out projections (2 flops per MAC), short
    depthwise conv (3 taps), (order-1) long convolutions, filter MLP over L positions.
    Elementwise gating/modulation is not counted.  fwd+bwd is counted as 3x fwd."""
    N, Cf = order, D * (order - 1)
    proj = 2 * B * L * D * (N + 1) * D + 2 * B * L * D * D
    short = 2 * B * L * (N + 1) * D * 3
    mlp = 2 * L * (E * F + 2 * F * F + F * Cf)
    return proj + short + (N - 1) * conv_flops(B, D, L) + mlp


def maxrss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def build(op, B, D, L, order):
    """Returns (fwd, fwdbwd, zero_grad) closures."""
    import torch
    sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures"))
    from make_fixtures import HyenaOperator, fftconv

    if op == "conv":
        u = torch.randn(B, D, L, requires_grad=True)
        k = (torch.randn(D, L) / L).requires_grad_()
        Dk = torch.randn(D, requires_grad=True)
        g = torch.randn(B, D, L)
        leaves = (u, k, Dk)
        f = lambda: fftconv(u, k, Dk)  # noqa: E731
    else:
        m = HyenaOperator(D, L, order, emb_dim=3, filter_order=64)
        u = torch.randn(B, L, D, requires_grad=True)
        g = torch.randn(B, L, D)
        leaves = (u, *m.parameters())
        f = lambda: m(u)  # noqa: E731

    def fwd():
        with torch.no_grad():
            f()

    def fwdbwd():
        f().backward(g)

    def zero_grad():
        for p in leaves:
            p.grad = None

    return fwd, fwdbwd, zero_grad


def timed(fn, zero_grad, budget_s, max_total_s=60.0):
    zero_grad()
    t0 = time.perf_counter()
    fn()  # warm-up
    t_warm = time.perf_counter() - t0
    reps = min(20, max(3, math.ceil(budget_s / max(t_warm, 1e-9))))
    reps = max(1, min(reps, int(max_total_s / max(t_warm, 1e-9))))  # very slow configs: fewer reps
    ts = []
    for _ in range(reps):
        zero_grad()
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3, reps


def run_single(op, L, a):
    import torch
    torch.set_num_threads(a.threads)
    # tiny warm-up of the same op (fwd+bwd at B=1, D=4, L=128): pays one-time costs
    # (module import, autograd engine and thread start-up, ~40 MiB) before the baseline
    build(op, 1, 4, 128, a.order)[1]()
    before = maxrss_mib()
    fwd, fwdbwd, zero_grad = build(op, a.batch, a.dim, L, a.order)
    fwdbwd()
    peak = maxrss_mib() - before
    fwd_ms, fwd_reps = timed(fwd, zero_grad, a.budget)
    fb_ms, reps = timed(fwdbwd, zero_grad, a.budget)
    fl = conv_flops(a.batch, a.dim, L) if op == "conv" else operator_flops(a.batch, a.dim, L, a.order)
    rec = dict(impl="pytorch", op=op, B=a.batch, D=a.dim, L=L, order=a.order, threads=a.threads,
               fwd_ms=round(fwd_ms, 4), fwdbwd_ms=round(fb_ms, 4),
               fwd_gflops=round(fl / fwd_ms / 1e6, 3), fwdbwd_gflops=round(3 * fl / fb_ms / 1e6, 3),
               peak_mib=round(peak, 1), reps=reps, fwd_reps=fwd_reps, torch=torch.__version__)
    print(json.dumps(rec), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    p.add_argument("--ops", default="conv,operator")
    p.add_argument("--lengths", default="1024,4096,16384,65536")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--order", type=int, default=2)
    p.add_argument("--threads", type=int, default=ncpu)
    p.add_argument("--budget", type=float, default=1.0, help="target seconds per measurement")
    p.add_argument("--json", action="store_true")
    p.add_argument("--single", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.single:
        op, L = a.single.split(",")
        return run_single(op, int(L), a)

    recs = []
    for op in a.ops.split(","):
        for L in a.lengths.split(","):
            cmd = [sys.executable, os.path.abspath(__file__), "--single", f"{op},{L}", "--batch", str(a.batch),
                   "--dim", str(a.dim), "--order", str(a.order), "--threads", str(a.threads),
                   "--budget", str(a.budget)]
            out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
            rec = json.loads(out.strip().splitlines()[-1])
            recs.append(rec)
            if a.json:
                print(json.dumps(rec), flush=True)
    if not a.json:
        print(f"PyTorch {recs[0]['torch'] if recs else ''}, threads={a.threads}, B={a.batch}, D={a.dim}, order={a.order}\n")
        print("| op | L | fwd ms | fwd+bwd ms | fwd GFLOP/s | fwd+bwd GFLOP/s | peak MiB | reps |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in recs:
            print(f"| {r['op']} | {r['L']} | {r['fwd_ms']:.3f} | {r['fwdbwd_ms']:.3f} | {r['fwd_gflops']:.2f} "
                  f"| {r['fwdbwd_gflops']:.2f} | {r['peak_mib']:.1f} | {r['reps']} |")


if __name__ == "__main__":
    main()
