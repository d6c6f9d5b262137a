"""PyTorch (CPU, float32) baseline for `hyena bench train`: full LM training steps.

Model (HyenaDNA-style LM, pre-norm residual blocks):
  embedding (vocab 12 padded to 16 rows, width D, no position embedding);
  n_layer blocks  x = x + HyenaOperator(LN(x));  x = x + fc2(gelu_tanh(fc1(LN(x))))
  (fc1 D -> 4D, fc2 4D -> D, both with bias; LayerNorm eps 1e-5);
  final LayerNorm; lm_head Linear(D -> 16, no bias, not tied to the embedding).
  Operator: order 2, emb_dim 5, filter_order 64, w 10, shift 0.05, l_max = L, modulated
  (the reference implementation in tests/fixtures/make_fixtures.py).

One training step = forward, cross-entropy over the 16 logits (random targets in [7, 10],
random input tokens in [7, 10]), backward, gradient clipping to norm 1.0, AdamW (lr 6e-4,
betas (0.9, 0.999), eps 1e-8, weight decay 0.1 except on biases, norms and the implicit
filter) and zero_grad(set_to_none=True) -- the same step as `hyena bench train`.

Shapes: tiny (D=128, n_layer=2, L=1024, B=8), small (D=256, n_layer=4, L=32768, B=1).

Each shape runs in a fresh subprocess.  ru_maxrss is read after importing torch and one
training step of a D=8, 1-layer, L=64 model (one-time costs), before the real model is
built; then the model and optimizer are built, one full training step is run (this is also
the warm-up step) and ru_maxrss is read again: peak_mib = the difference.
activation_mib = peak_mib - (parameters + gradients + two AdamW moments, 16 bytes per
parameter) - buffers - input/target tokens.  Then `steps` steps are timed; step_ms is the
median, tokens_per_s = B * L / step seconds.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SHAPES = {  # name: (D, n_layer, L, B, default steps)
    "tiny": (128, 2, 1024, 8, 5),
    "small": (256, 4, 32768, 1, 3),
}
VOCAB = 12
PADDED_VOCAB = 16


def maxrss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def make_model(D, n_layer, L):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures"))
    from make_fixtures import HyenaOperator

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1 = nn.LayerNorm(D, eps=1e-5)
            self.mixer = HyenaOperator(D, L, order=2, emb_dim=5, filter_order=64, w=10.0, shift=0.05)
            self.norm2 = nn.LayerNorm(D, eps=1e-5)
            self.fc1 = nn.Linear(D, 4 * D)
            self.fc2 = nn.Linear(4 * D, D)

        def forward(self, x):
            x = x + self.mixer(self.norm1(x))
            return x + self.fc2(F.gelu(self.fc1(self.norm2(x)), approximate="tanh"))

    class HyenaLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(PADDED_VOCAB, D)
            self.blocks = nn.ModuleList(Block() for _ in range(n_layer))
            self.ln_f = nn.LayerNorm(D, eps=1e-5)
            self.lm_head = nn.Linear(D, PADDED_VOCAB, bias=False)

        def forward(self, tokens):
            x = self.embedding(tokens)
            for blk in self.blocks:
                x = blk(x)
            return self.lm_head(self.ln_f(x))

    return HyenaLM()


def decays(name):
    """Weight-decay group (as in the Rust trainer): not biases, norms or the implicit filter."""
    return not (name.endswith(".bias") or "norm" in name or "ln_f" in name or "filter_fn." in name)


def make_trainer(D, n_layer, L, B):
    """Build model, AdamW and data; returns (step, model, inputs)."""
    import torch
    import torch.nn.functional as F

    model = make_model(D, n_layer, L)
    named = list(model.named_parameters())
    groups = [
        {"params": [p for n, p in named if decays(n)], "weight_decay": 0.1},
        {"params": [p for n, p in named if not decays(n)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=6e-4, betas=(0.9, 0.999), eps=1e-8)
    params = [p for _, p in named]
    x = torch.randint(7, 11, (B, L))
    y = torch.randint(7, 11, (B, L))

    def step():
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, PADDED_VOCAB), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step, model, (x, y)


def run_single(shape, a):
    import torch

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    D, n_layer, L, B, default_steps = SHAPES[shape]
    steps = a.steps if a.steps else default_steps

    # One-time costs (autograd engine, thread pool, AdamW, FFT plans, ...) before the baseline.
    make_trainer(8, 1, 64, 1)[0]()
    before = maxrss_mib()

    step, model, inputs = make_trainer(D, n_layer, L, B)
    loss0 = step()  # memory step, also the warm-up step
    peak = maxrss_mib() - before

    n_params = sum(p.numel() for p in model.parameters())
    state_mib = 16.0 * n_params / 2**20  # param + grad + exp_avg + exp_avg_sq, f32
    other_mib = (sum(b.numel() * b.element_size() for b in model.buffers())
                 + sum(t.numel() * t.element_size() for t in inputs)) / 2**20

    times = []
    loss = loss0
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t0)
    step_ms = statistics.median(times) * 1e3
    rec = dict(impl="pytorch", shape=shape, B=B, L=L, D=D, n_layer=n_layer, threads=a.threads,
               step_ms=round(step_ms, 3), tokens_per_s=round(B * L / (step_ms * 1e-3), 1),
               peak_mib=round(peak, 1), activation_mib=round(peak - state_mib - other_mib, 1),
               steps=steps, params=n_params, loss_first=round(loss0, 4), loss_last=round(loss, 4),
               torch=torch.__version__)
    print(json.dumps(rec), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    p.add_argument("--shapes", default="tiny,small", help="comma-separated: tiny, small")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 5 tiny, 3 small)")
    p.add_argument("--threads", type=int, default=ncpu)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--single", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.single:
        return run_single(a.single, a)

    shapes = [s.strip() for s in a.shapes.split(",") if s.strip()]
    for s in shapes:
        if s not in SHAPES:
            p.error(f"unknown shape {s!r} (expected one of {', '.join(SHAPES)})")
    recs = []
    for s in shapes:
        cmd = [sys.executable, os.path.abspath(__file__), "--single", s, "--threads", str(a.threads)]
        if a.steps:
            cmd += ["--steps", str(a.steps)]
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
        rec = json.loads(out.strip().splitlines()[-1])
        recs.append(rec)
        if a.json:
            print(json.dumps(rec), flush=True)
    if not a.json:
        print(f"PyTorch {recs[0]['torch'] if recs else ''}, threads={a.threads}, float32, training steps\n")
        print("| shape | B | L | D | n_layer | step ms | tokens/s | peak MiB | activation MiB | steps |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in recs:
            print(f"| {r['shape']} | {r['B']} | {r['L']} | {r['D']} | {r['n_layer']} | {r['step_ms']:.1f} "
                  f"| {r['tokens_per_s']:.0f} | {r['peak_mib']:.1f} | {r['activation_mib']:.1f} | {r['steps']} |")


if __name__ == "__main__":
    main()
