"""Run `hyena bench` and bench/torch_bench.py on the same configs and compare.

  cargo build --release -p hyena-cli && python3 bench/compare.py --ops conv,operator
  cargo build --release -p hyena-cli && python3 bench/compare.py --ops train

`--ops train` compares full LM training steps (`hyena bench train` against
bench/torch_train_bench.py), shape by shape (tiny, then small), hyena then PyTorch for each, so
that both sides of a ratio run minutes apart at most; `--rounds N` repeats that N times and
reports the median of each side.

The Rust bench is called once per op as
  <hyena> bench <op> --json --lengths ... --batch B --dim D [--order N] <hyena-flags>
(`--order` for the operator only: each `hyena bench` kind takes only its own flags)
with RAYON_NUM_THREADS set to the thread count; non-JSON lines in its output are ignored.
Speedup = torch time / hyena time (> 1 means hyena is faster).
"""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def json_lines(text):
    recs = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return recs


def run(cmd, env=None):
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, env=env).stdout


def fmt(x, spec=".3f"):
    return "n/a" if x is None else format(x, spec)


def main():
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hyena", default="target/release/hyena", help="path of the hyena binary")
    p.add_argument("--ops", default="conv,operator")
    p.add_argument("--lengths", default="1024,4096,16384,65536")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--order", type=int, default=2)
    p.add_argument("--threads", type=int, default=ncpu)
    p.add_argument("--hyena-flags", default="--threads {threads}",
                   help="extra flags for `hyena bench` ({threads}, {order} are substituted); "
                        "`--order` is passed to `hyena bench operator` (only it has the flag)")
    p.add_argument("--save", metavar="FILE.json", help="write all raw records here")
    p.add_argument("--shapes", default="tiny,small", help="--ops train: training shapes")
    p.add_argument("--rounds", type=int, default=1, help="--ops train: repetitions per shape")
    a = p.parse_args()

    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    if a.ops == "train":
        return compare_train(a, env)
    common = ["--lengths", a.lengths, "--batch", str(a.batch), "--dim", str(a.dim)]
    extra = a.hyena_flags.format(threads=a.threads, order=a.order).split()
    hy = []
    for op in a.ops.split(","):
        own = ["--order", str(a.order)] if op == "operator" else []
        recs = json_lines(run([a.hyena, "bench", op, "--json", *common, *own, *extra], env))
        hy += [dict(r, impl=r.get("impl", "hyena"), op=r.get("op", op)) for r in recs]
    th = json_lines(run([sys.executable, os.path.join(HERE, "torch_bench.py"), "--json", "--ops", a.ops,
                         "--order", str(a.order), "--threads", str(a.threads), *common]))

    print(f"\nB={a.batch}, D={a.dim}, order={a.order}, threads={a.threads}; "
          "speedup = torch time / hyena time\n")
    for op in a.ops.split(","):
        print(f"### {op}\n")
        print("| L | hyena fwd ms | torch fwd ms | fwd speedup | hyena fwd+bwd ms | torch fwd+bwd ms "
              "| fwd+bwd speedup | hyena peak MiB | torch peak MiB |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for L in (int(x) for x in a.lengths.split(",")):
            h = next((r for r in hy if r["op"] == op and int(r.get("L", -1)) == L), {})
            t = next((r for r in th if r["op"] == op and r["L"] == L), {})
            row = [str(L)]
            for key in ("fwd_ms", "fwdbwd_ms"):
                hv, tv = h.get(key), t.get(key)
                row += [fmt(hv), fmt(tv), fmt(tv / hv if hv and tv else None, ".2f") + ("x" if hv and tv else "")]
            row += [fmt(h.get("peak_mib"), ".1f"), fmt(t.get("peak_mib"), ".1f")]
            print("| " + " | ".join(row) + " |")
        print()
    if a.save:
        with open(a.save, "w") as f:
            json.dump({"args": vars(a), "hyena": hy, "pytorch": th}, f, indent=1)
        print(f"raw records written to {a.save}")


def compare_train(a, env):
    import statistics
    rows, raw = [], []
    for shape in a.shapes.split(","):
        hs, ts = [], []
        for _ in range(a.rounds):
            hs += json_lines(run([a.hyena, "bench", "train", "--json", "--shapes", shape,
                                  "--threads", str(a.threads)], env))
            ts += json_lines(run([sys.executable, os.path.join(HERE, "torch_train_bench.py"), "--json",
                                  "--shapes", shape, "--threads", str(a.threads)]))
        raw += hs + ts
        med = lambda recs, k: statistics.median(r[k] for r in recs) if recs else None
        rows.append((shape, hs[0] if hs else {}, med(hs, "tokens_per_s"), med(ts, "tokens_per_s"),
                     med(hs, "activation_mib"), med(ts, "activation_mib"),
                     med(hs, "peak_mib"), med(ts, "peak_mib")))
    print(f"\nfull training steps, threads={a.threads}, rounds={a.rounds} (medians); "
          "speedup = hyena tokens/s / torch tokens/s\n")
    print("| shape | B | L | D | layers | hyena tok/s | torch tok/s | speedup | hyena act. MiB "
          "| torch act. MiB | hyena peak MiB | torch peak MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for shape, h, htps, ttps, hact, tact, hpk, tpk in rows:
        sp = fmt(htps / ttps, ".2f") + "x" if htps and ttps else "n/a"
        print(f"| {shape} | {h.get('B')} | {h.get('L')} | {h.get('D')} | {h.get('n_layer')} | {fmt(htps, '.0f')} "
              f"| {fmt(ttps, '.0f')} | {sp} | {fmt(hact, '.1f')} | {fmt(tact, '.1f')} | {fmt(hpk, '.1f')} "
              f"| {fmt(tpk, '.1f')} |")
    if a.save:
        with open(a.save, "w") as f:
            json.dump({"args": vars(a), "records": raw}, f, indent=1)
        print(f"raw records written to {a.save}")


if __name__ == "__main__":
    main()
