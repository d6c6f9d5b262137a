"""Training and analysis from Python: the same runs and result records as the CLI."""

import csv
import json
import random

import numpy as np
import pytest

import hyena
from conftest import random_dna, run_cli


def small_config(steps=6):
    cfg = hyena.train_config()
    cfg["train"]["steps"] = steps
    cfg["train"]["eval_every"] = 3
    cfg["train"]["eval_windows"] = 4
    cfg["train"]["batch_size"] = 2
    cfg["train"]["seq_len"] = 128
    cfg["model"]["n_layer"] = 1
    cfg["model"]["operator"]["d_model"] = 32
    cfg["model"]["operator"]["l_max"] = 128
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cli):
    """A short run from Python and the same config through the CLI."""
    d = tmp_path_factory.mktemp("train")
    cfg = small_config()
    events = []
    res = hyena.train(cfg, d / "py", progress=events.append)
    (d / "cfg.json").write_text(json.dumps(cfg))
    run_cli(cli, "train", "--config", d / "cfg.json", "--out", d / "cli")
    return d, res, events


def test_train_returns_what_the_cli_writes(trained):
    d, res, events = trained
    assert res["out"] == str(d / "py")
    metrics = [json.loads(l) for l in (d / "py" / "metrics.jsonl").read_text().splitlines()]
    evals = [m for m in metrics if "bits_per_token" in m]
    assert res["eval"]["bits_per_token"] == evals[-1]["bits_per_token"]
    assert res["eval"]["step"] == 6
    assert len(res["baselines"]) >= 2
    steps = [e for e in events if e["unit"] == "steps"]
    assert [e["done"] for e in steps][-1] == 6 and steps[-1]["total"] == 6
    # The CLI with the same config trains the same model: the same metrics, bit for bit.
    cli_metrics = [json.loads(l) for l in (d / "cli" / "metrics.jsonl").read_text().splitlines()]
    strip = lambda ms: [{k: v for k, v in m.items() if "time" not in k and k != "seconds" and "per_s" not in k} for m in ms]
    assert strip(metrics) == strip(cli_metrics)
    a = hyena.load(d / "py").embed("ACGTACGTTT")
    b = hyena.load(d / "cli").embed("ACGTACGTTT")
    assert np.array_equal(a, b)


def test_train_resume_and_refusals(trained, tmp_path):
    d, _, _ = trained
    with pytest.raises(ValueError):
        hyena.train(small_config(), d / "py", progress=False)  # a run is there already
    cfg = small_config(steps=8)
    res = hyena.train(cfg, d / "py", resume=True, progress=False)
    # The run continued from step 6 to 8 and evaluated at its end.
    assert res["eval"]["step"] == 8
    steps = [json.loads(l).get("step") for l in (d / "py" / "metrics.jsonl").read_text().splitlines()]
    assert 7 in steps and 8 in steps
    with pytest.raises(ValueError, match="exclude"):
        hyena.train(cfg, d / "py", resume=True, force=True)


def test_distill_then_generate_recurrently(trained, tmp_path, cli):
    d, _, _ = trained
    rep = hyena.distill(d / "py", tmp_path / "dist", config={"order": 4, "refine_steps": 5},
                        progress=False)
    assert rep["config"]["order"] == 4 and rep["filters"]
    run_cli(cli, "distill", "--model", d / "py", "--out", tmp_path / "dist_cli", "--order", "4",
            "--refine-steps", "5")
    assert json.loads((tmp_path / "dist_cli" / "distill_report.json").read_text())["filters"] == rep["filters"]
    m = hyena.load(tmp_path / "dist")
    a = m.generate("ACGTACGT", 12, seed=1, mode="recurrent")
    b = m.generate("ACGTACGT", 12, seed=1, mode="conv")
    assert len(a) == 12 and a == b
    with pytest.raises(FileExistsError):
        hyena.distill(d / "py", tmp_path / "dist", config={"order": 4})


def test_finetune_returns_eval_json(tmp_path):
    rng = random.Random(0)
    rows = []
    for split, n in [("train", 48), ("test", 16)]:
        for i in range(n):
            label = i % 2
            # GC-rich against AT-rich sequences: learnable in a few steps.
            alphabet = "GGCCAT" if label else "AATTGC"
            rows.append(("".join(rng.choice(alphabet) for _ in range(64)), str(label), split))
    data = tmp_path / "task.csv"
    with open(data, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sequence", "label", "split"])
        w.writerows(rows)
    ev = hyena.finetune(data, tmp_path / "ft", preset="hyenadna-tiny",
                        config={"epochs": 2.0, "batch_size": 8, "seed": 0}, progress=False)
    assert ev == json.loads((tmp_path / "ft" / "eval.json").read_text())
    test = ev["test"]
    assert test["n"] == 16 and 0 <= test["correct"] <= 16
    assert test["accuracy"] == test["correct"] / 16
    clf = hyena.load(tmp_path / "ft")
    assert clf.family == "classifier"
    assert clf.embed("ACGTACGT").shape[0] == 1
    with pytest.raises(ValueError, match="either model"):
        hyena.finetune(data, tmp_path / "ft2")


def test_mad_equals_the_cli_results(tmp_path, cli):
    r = hyena.mad("hyena,swiglu", ["memorization"], quick=True, d_model=16, budget=100000,
                  out=tmp_path / "py", progress=False)
    run_cli(cli, "mad", "--arch", "hyena,swiglu", "--task", "memorization", "--quick",
            "--budget", "100000", "--d-model", "16", "--out", tmp_path / "cli")
    want = json.loads((tmp_path / "cli" / "results.json").read_text())[0]
    got = json.loads((tmp_path / "py" / "results.json").read_text())[0]
    for x in (r, want, got):
        x.pop("seconds")
        for t in x["tasks"]:
            t.pop("seconds", None)
            for run in t.get("runs", []):
                run.pop("seconds", None)
    assert r == got
    assert r["tasks"][0]["score"] == want["tasks"][0]["score"]
    assert r["overall"] == want["overall"]
    with pytest.raises(ValueError, match="unknown MAD task"):
        hyena.mad("hyena", ["recal"])
