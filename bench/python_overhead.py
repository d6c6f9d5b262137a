#!/usr/bin/env python3
"""The Python package against the CLI on the same input: `model.embed` from Python and
`hyena embed` on one 100 kb record, side by side, rounds alternating, medians reported.

Each round runs two fresh processes: the `hyena embed` command, and a Python process that
imports hyena, loads the same model and calls `model.embed(path, pool=None)`. Reported, per
side: the wall time of the whole process (load + embed + output), the time of the embed
itself (Python: timed around the call; the CLI: its run minus a run on a 4-base record), the
CPU time of each process (user + system: steadier than wall time when other work shares the
machine), and the peak resident memory of the process above what the
process holds once the model is loaded and has embedded a 4-base record (Python: measured in
the process before the 100 kb call; the CLI: a separate run on the 4-base record).

    python3 bench/python_overhead.py --model DIR [--bases 100000] [--rounds 5] [--threads N] [--cli PATH]

Needs the package installed (`pip install ./crates/hyena-py`) and the CLI built
(`cargo build --release -p hyena-cli`).
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PY_SIDE = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import hyena
import numpy as np
m = hyena.load(sys.argv[1], precision=sys.argv[3])
m.embed("ACGT", pool=None, progress=False)  # what the CLI's baseline run does (threads started)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t1 = time.perf_counter()
out = m.embed(sys.argv[2], pool=None, progress=False)
t2 = time.perf_counter()
arr_bytes = sum(a.nbytes for a in out)
print(json.dumps({"load_s": t1 - t0, "embed_s": t2 - t1, "total_s": t2 - t0,
                  "base_kib": base, "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "array_bytes": arr_bytes}))
"""


ENV = dict(os.environ)


def run(cmd):
    """Wall seconds, peak RSS (KiB), stdout and CPU seconds of one process."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    out = p.stdout.read().decode()
    err = p.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{err}")
    return wall, ru.ru_maxrss, out, ru.ru_utime + ru.ru_stime


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--bases", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--precision", default="f32")
    ap.add_argument("--cli", default=str(ROOT / "target" / "release" / "hyena"))
    ap.add_argument("--threads", type=int, default=None,
                    help="worker threads of both sides (RAYON_NUM_THREADS) [default: all cores]")
    a = ap.parse_args()
    if a.threads:
        ENV["RAYON_NUM_THREADS"] = str(a.threads)
    tmp = Path(tempfile.mkdtemp())
    rng = random.Random(0)
    fa = tmp / "in.fa"
    fa.write_text(">rec\n" + "".join(rng.choice("ACGT") for _ in range(a.bases)) + "\n")
    empty = tmp / "empty.fa"
    empty.write_text(">x\nACGT\n")
    cli_base = []
    rows = {"cli": [], "py": []}
    for r in range(a.rounds):
        order = ["cli", "py"] if r % 2 == 0 else ["py", "cli"]
        for side in order:
            if side == "cli":
                out = tmp / f"cli{r}.npy"
                wall, rss, _, cpu = run([a.cli, "embed", "--model", a.model, "--fasta", fa, "--out", out,
                                         "--pool", "none", "--precision", a.precision])
                bwall, brss, _, bcpu = run([a.cli, "embed", "--model", a.model, "--fasta", empty,
                                            "--out", tmp / f"e{r}.npy", "--pool", "none", "--precision", a.precision])
                cli_base.append(brss)
                rows["cli"].append({"total_s": wall, "embed_s": wall - bwall, "peak_kib": rss, "base_kib": brss,
                                    "cpu_s": cpu, "embed_cpu_s": cpu - bcpu})
                out.unlink()
            else:
                wall, rss, stdout, cpu = run([sys.executable, "-c", PY_SIDE, a.model, fa, a.precision])
                d = json.loads(stdout)
                d["proc_s"] = wall
                d["cpu_s"] = cpu
                rows["py"].append(d)
    med = lambda side, k: statistics.median(x[k] for x in rows[side])
    arr_mib = rows["py"][0]["array_bytes"] / 2**20
    cli_extra = (med("cli", "peak_kib") - med("cli", "base_kib")) / 1024
    py_extra = (med("py", "peak_kib") - med("py", "base_kib")) / 1024
    print(f"model {a.model}, one record of {a.bases:,} bases, pool none, {a.threads or 'all'} threads, "
          f"{a.rounds} rounds (alternating), medians")
    print("| | CLI `hyena embed` | Python `model.embed` | ratio Python / CLI |")
    print("|---|---:|---:|---:|")
    print(f"| whole process, s | {med('cli', 'total_s'):.3f} | {med('py', 'proc_s'):.3f} | {med('py', 'proc_s') / med('cli', 'total_s'):.3f} |")
    print(f"| embed step, s | {med('cli', 'embed_s'):.3f} | {med('py', 'embed_s'):.3f} | {med('py', 'embed_s') / med('cli', 'embed_s'):.3f} |")
    print(f"| whole process, CPU s (user + system) | {med('cli', 'cpu_s'):.3f} | {med('py', 'cpu_s'):.3f} | {med('py', 'cpu_s') / med('cli', 'cpu_s'):.3f} |")
    print(f"| peak resident above the loaded-model baseline, MiB | {cli_extra:.1f} | {py_extra:.1f} | |")
    print(f"returned array {arr_mib:.1f} MiB; Python peak - (CLI peak + array) = {py_extra - cli_extra - arr_mib:+.1f} MiB")


if __name__ == "__main__":
    main()
