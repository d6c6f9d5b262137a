"""Run `hyena bench` and bench/torch_bench.py on the same configs and compare.

  cargo build --release -p hyena-cli && python3 bench/compare.py --ops conv,operator

The Rust bench is called once per op as
  <hyena> bench <op> --json --lengths ... --batch B --dim D <hyena-flags>
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
    p.add_argument("--hyena-flags", default="--threads {threads} --order {order}",
                   help="extra flags for `hyena bench` ({threads}, {order} are substituted)")
    p.add_argument("--save", metavar="FILE.json", help="write all raw records here")
    a = p.parse_args()

    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    common = ["--lengths", a.lengths, "--batch", str(a.batch), "--dim", str(a.dim)]
    extra = a.hyena_flags.format(threads=a.threads, order=a.order).split()
    hy = []
    for op in a.ops.split(","):
        recs = json_lines(run([a.hyena, "bench", op, "--json", *common, *extra], env))
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


if __name__ == "__main__":
    main()
