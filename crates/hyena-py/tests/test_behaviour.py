"""What a Python user expects of a long call: other threads keep running (the GIL is
released), Ctrl-C stops it within a second and leaves no half-written file, and errors are
Python exceptions of the documented types with the CLI's messages."""

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import hyena
from conftest import FIXTURES, random_dna

LONG = [random_dna(1024, s) for s in range(8)]


@pytest.fixture(scope="module")
def tiny():
    return hyena.load("hyenadna-tiny", seed=0)


def test_other_threads_run_during_a_long_call(tiny):
    # The same work twice: once with a counting thread beside it. While the engine runs, the
    # thread must get the interpreter (with the GIL held it would count nearly nothing).
    seqs = LONG * 6
    t0 = time.perf_counter()
    tiny.embed(seqs)
    alone = time.perf_counter() - t0
    assert alone > 0.2, f"the call is too short to test ({alone:.3f} s)"
    count, stop = [0], threading.Event()

    def counter():
        while not stop.is_set():
            count[0] += 1

    th = threading.Thread(target=counter)
    th.start()
    try:
        t0 = time.perf_counter()
        out = tiny.embed(seqs)
        during = time.perf_counter() - t0
    finally:
        stop.set()
        th.join()
    assert out.shape == (len(seqs), 128)
    # Measure what the thread reaches alone in the same time, for scale.
    alone_count, stop2 = [0], threading.Event()

    def counter2():
        while not stop2.is_set():
            alone_count[0] += 1

    th2 = threading.Thread(target=counter2)
    th2.start()
    time.sleep(during)
    stop2.set()
    th2.join()
    # Released GIL: the thread ran through the call (sharing the cores with the engine's
    # workers; polls take the GIL only briefly). Held, it would have counted almost nothing.
    assert count[0] > 0.05 * alone_count[0], (count[0], alone_count[0], during)


def interrupt_after(seconds: float) -> dict:
    """SIGINT to this process after `seconds` (what Ctrl-C does); returns when it was sent."""
    sent = {}

    def fire():
        sent["t"] = time.perf_counter()
        os.kill(os.getpid(), signal.SIGINT)

    t = threading.Timer(seconds, fire)
    t.daemon = True
    t.start()
    return sent


def test_ctrl_c_stops_a_long_embed_within_a_second(tiny):
    seqs = LONG * 200  # minutes of work
    sent = interrupt_after(0.5)
    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        tiny.embed(seqs)
    end = time.perf_counter()
    assert "t" in sent, "the call ended before the signal"
    assert end - sent["t"] < 1.0, f"took {end - sent['t']:.2f} s to stop"
    assert end - t0 < 5
    # The model still works afterwards.
    assert tiny.embed("ACGT").shape == (1, 128)


def test_ctrl_c_in_training_leaves_no_partial_file(tmp_path):
    cfg = hyena.train_config()
    cfg["train"]["steps"] = 100000
    cfg["train"]["eval_every"] = 100000
    cfg["train"]["save_every"] = 3
    cfg["model"]["n_layer"] = 1
    out = tmp_path / "run"
    sent = interrupt_after(4.0)
    with pytest.raises(KeyboardInterrupt):
        hyena.train(cfg, out, progress=False)
    end = time.perf_counter()
    assert end - sent["t"] < 1.0, f"took {end - sent['t']:.2f} s to stop"
    names = [p.name for p in out.rglob("*")]
    assert not [n for n in names if n.startswith(".") and ".tmp" in n], names
    # What was committed is whole: the run resumes from it.
    if (out / "state.json").exists() or any("step" in n for n in names):
        cfg["train"]["steps"] = max(cfg["train"]["steps"], 1)
        m = hyena.load(out)
        assert m.family == "hyenadna"


def test_progress_callback_and_its_exception(tiny):
    seen = []
    tiny.embed(LONG[:2], progress=seen.append)
    assert seen and {"unit", "done", "total", "message"} <= set(seen[-1])
    assert seen[-1]["unit"] == "blocks" and seen[-1]["done"] == seen[-1]["total"]

    class Stop(Exception):
        pass

    def bad(e):
        raise Stop("from the callback")

    with pytest.raises(Stop):
        tiny.embed(LONG * 50, progress=bad)


def test_missing_files_raise_file_not_found(tiny, tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        hyena.load(tmp_path / "no-such-model")
    assert isinstance(e.value, hyena.HyenaError)
    with pytest.raises(FileNotFoundError):
        tiny.embed(tmp_path / "missing.fa")
    with pytest.raises(FileNotFoundError):
        tiny.score("no/such/file.fasta")
    with pytest.raises(FileNotFoundError, match="released Evo 2"):
        hyena.load("evo2_7b")


def test_unknown_preset(tmp_path):
    with pytest.raises(FileNotFoundError, match="hyenadna-tiny"):
        hyena.load("hyenadna-huge")
    with pytest.raises(ValueError, match="unknown; the presets are"):
        hyena.train_config("hyenadna-huge")


def test_bad_fasta_raises_value_error_with_the_cli_message(tiny, tmp_path, cli):
    import subprocess

    bad = tmp_path / "bad.fa"
    bad.write_text("ACGT without a header\n")
    with pytest.raises(ValueError) as e:
        tiny.embed(bad)
    assert isinstance(e.value, hyena.HyenaValueError)
    assert str(bad) in str(e.value)
    # The CLI prints the same message after its own context.
    model = FIXTURES / "hyenadna" / "tiny-hf"
    r = subprocess.run([str(cli), "score", "--model", str(model), "--fasta", str(bad)],
                       capture_output=True, text=True)
    assert r.returncode != 0 and str(e.value) in r.stderr, (str(e.value), r.stderr)
    with pytest.raises(ValueError, match="outside the alphabet"):
        tiny.score("ACGTZZ")
    with pytest.raises(ValueError, match="at most 1026"):
        tiny.embed("A" * 2000)


def test_wrong_shape_config_raises_value_error(tmp_path):
    cfg = hyena.train_config()
    cfg["model"]["operator"]["d_model"] = 0
    with pytest.raises(ValueError, match="d_model"):
        hyena.train(cfg, tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()
    with pytest.raises(ValueError):
        hyena.train({"model": {"n_layer": "two"}}, tmp_path / "r2", progress=False)
    with pytest.raises(ValueError, match="pool"):
        hyena.load("hyenadna-tiny").embed("ACGT", pool="max")


def test_malicious_pickle_is_refused_and_not_run(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    shutil.copy(FIXTURES / "hyenadna" / "tiny-hf" / "config.json", d / "config.json")
    shutil.copy(FIXTURES / "torch" / "evil_value.bin", d / "pytorch_model.bin")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        before = set(os.listdir(tmp_path))
        with pytest.raises(ValueError, match="may be malicious") as e:
            hyena.load(d)
        assert isinstance(e.value, hyena.HyenaError)
        assert set(os.listdir(tmp_path)) == before  # nothing was executed
    finally:
        os.chdir(cwd)


def test_progress_true_draws_a_tqdm_bar(tiny, capsys):
    pytest.importorskip("tqdm")
    out = tiny.embed(LONG[:3], progress=True)
    assert out.shape == (3, 128)
    err = capsys.readouterr().err
    assert "embed" in err and "blocks" in err, err
