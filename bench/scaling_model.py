#!/usr/bin/env python3
"""The data-parallel scaling estimates of docs/scaling.md, from measured step times.

Model (weak scaling: every node keeps its per-node batch, the global batch grows with N):
  step(N) = compute + allreduce(N)        (hyena does not overlap the two)
  allreduce(N) = 2 (N-1)/N * S / B + 2 (N-1) * alpha      (ring reduce-scatter + all-gather)
  efficiency(N) = compute / step(N)
S = 4 bytes x parameters (f32 gradients), B = link bandwidth, alpha = per-message latency.

Usage: python3 bench/scaling_model.py [SMALL_PARAMS]   (edit MEASURED with the numbers of
bench/data_parallel.sh on your nodes; prints the markdown tables)
"""

# Per-node step time (s) at the preset's per-node batch, measured on this project's 2-core
# machine with bench/data_parallel.sh (1 process x 2 threads), and the gradient size.
MEASURED = {
    # name: (parameters, step seconds, tokens per node-step)
    "hyenadna-tiny (8 x 1,024)": (438_144, 0.199, 8 * 1024),
    "hyenadna-small (2 x 32,768)": (None, 11.35, 2 * 32768),
}
# A 100M-parameter model (matrix products dominate: 6 * P FLOP per token) at this machine's
# measured f32 matrix-product peak (`hyena bench products`: 189-197 GFLOP/s on 2 cores), 8 x
# 1,024 tokens per node-step. The peak understates the step time (no kernel reaches it over a
# whole step), so the communication share below is an upper bound.
SGEMM_PEAK = 190e9
HUNDRED_M = 100_000_000
LINKS = {"10 Gb/s": (10e9 / 8, 25e-6), "100 Gb/s": (100e9 / 8, 5e-6)}
NODES = (8, 32, 64)


def allreduce(n, size_bytes, bw, alpha):
    return 2 * (n - 1) / n * size_bytes / bw + 2 * (n - 1) * alpha


def table(rows):
    out = ["| model | gradient | compute/step | link | " +
           " | ".join(f"N={n}: comm/compute, efficiency" for n in NODES) + " |",
           "|---|---:|---:|---|" + "---:|" * len(NODES)]
    for name, params, compute in rows:
        for link, (bw, alpha) in LINKS.items():
            cells = []
            for n in NODES:
                c = allreduce(n, 4 * params, bw, alpha)
                cells.append(f"{c / compute:.3f}, {compute / (compute + c):.1%}")
            out.append(f"| {name} | {4 * params / 1e6:.1f} MB | {compute:.3g} s | {link} | "
                       + " | ".join(cells) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    import sys
    small_params = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    rows = []
    for name, (p, t, tok) in MEASURED.items():
        p = p or small_params
        rows.append((name, p, t))
    t_100m = 6 * HUNDRED_M * 8 * 1024 / SGEMM_PEAK
    rows.append(("100M parameters (8 x 1,024)", HUNDRED_M, t_100m))
    print("Nodes like this project's test machine (2 cores):\n")
    print(table(rows))
    # A 32-core node computes about 16 times faster; the gradient is the same size.
    print("\nNodes 16 times faster (32 cores of the same kind; compute / 16):\n")
    print(table([(n, p, t / 16) for n, p, t in rows]))
