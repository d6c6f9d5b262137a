"""Every inference method on small models, against the `hyena` command on the same inputs:
the same library calls, so the same bits."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

import hyena
from conftest import random_dna, run_cli


@pytest.fixture(scope="module")
def hdna(hyenadna_dir):
    return hyena.load(hyenadna_dir, precision="f32")


@pytest.fixture(scope="module")
def evo2(evo2_dir):
    return hyena.load(evo2_dir, precision="f32")


def test_load_reports_the_model(hdna, evo2, hyenadna_dir):
    assert hdna.family == "hyenadna" and evo2.family == "evo2"
    assert hdna.d_model == 64 and hdna.n_layer == 2 and hdna.max_len == 1026
    assert hdna.config["model"]["operator"]["d_model"] == 64
    assert hdna.path == Path(hyenadna_dir)
    assert hdna.tokenizer == "nucleotide" and evo2.tokenizer == "bytes"
    assert evo2.d_model == 32 and evo2.vocab_size == 512
    assert "hyenadna" in repr(hdna)
    p = hyena.load("hyenadna-tiny", seed=3)
    assert p.path is None and p.d_model == 128 and p.max_len == 1026
    # A preset is seeded: the same seed gives the same weights.
    q = hyena.load("hyenadna-tiny", seed=3)
    r = hyena.load("hyenadna-tiny", seed=4)
    x = "ACGTTGCA" * 8
    assert np.array_equal(p.embed(x), q.embed(x))
    assert not np.array_equal(p.embed(x), r.embed(x))


@pytest.mark.parametrize("which", ["hdna", "evo2"])
def test_embed_equals_the_cli_bit_for_bit(which, request, tmp_path, fasta, cli, hyenadna_dir, evo2_dir):
    model = request.getfixturevalue(which)
    d = hyenadna_dir if which == "hdna" else evo2_dir
    for pool in ["mean", "last", None]:
        out = tmp_path / f"e_{pool}.npy"
        run_cli(cli, "embed", "--model", d, "--fasta", fasta, "--out", out,
                "--pool", pool or "none", "--precision", "f32")
        want = np.load(out)
        got = model.embed(fasta, pool=pool)
        if pool is None:
            assert [g.shape[0] for g in got] == [300, 77, 513]
            got = np.concatenate(got)
        assert got.dtype == np.float32
        assert np.array_equal(got, want), f"pool {pool}"
    # An inner layer.
    out = tmp_path / "l1.npy"
    run_cli(cli, "embed", "--model", d, "--fasta", fasta, "--out", out, "--layer", "1",
            "--precision", "f32")
    assert np.array_equal(model.embed(fasta, layer=1), np.load(out))


def test_named_layer_of_evo2(evo2, tmp_path, fasta, cli, evo2_dir):
    out = tmp_path / "named.npy"
    run_cli(cli, "embed", "--model", evo2_dir, "--fasta", fasta, "--out", out,
            "--layer", "blocks.3.mlp.l3", "--pool", "none", "--precision", "f32")
    got = np.concatenate(evo2.embed(fasta, layer="blocks.3.mlp.l3", pool=None))
    assert np.array_equal(got, np.load(out))
    with pytest.raises(ValueError, match="blocks.99"):
        evo2.embed("ACGT", layer="blocks.99.mlp.l3")


@pytest.mark.parametrize("which", ["hdna", "evo2"])
def test_score_equals_the_cli(which, request, tmp_path, fasta, cli, hyenadna_dir, evo2_dir):
    model = request.getfixturevalue(which)
    d = hyenadna_dir if which == "hdna" else evo2_dir
    for reduce in ["sum", "mean"]:
        for rc in [False, True]:
            args = ["score", "--model", d, "--fasta", fasta, "--json", "--reduce", reduce,
                    "--precision", "f32"]
            if rc:
                args.append("--reverse-complement")
            want = [json.loads(l)["log_likelihood"] for l in run_cli(cli, *args).splitlines()]
            got = model.score(fasta, reduce=reduce, rc_average=rc)
            assert got.dtype == np.float64
            # JSON prints f64 shortest-exact: the same bits.
            assert got.tolist() == want, (reduce, rc)
    tsv = tmp_path / "pb.tsv"
    run_cli(cli, "score", "--model", d, "--fasta", fasta, "--per-base", tsv, "--precision", "f32")
    rows = [l.split("\t") for l in tsv.read_text().splitlines()[1:]]
    per_base = model.score(fasta, reduce=None)
    assert [len(p) for p in per_base] == [299, 76, 512]
    flat = np.concatenate(per_base)
    assert flat.dtype == np.float32
    # The TSV has 6 decimals.
    assert np.max(np.abs(flat - np.array([float(r[3]) for r in rows]))) <= 5e-7
    # The per-base values sum to the score.
    sums = model.score(fasta, reduce="sum")
    assert np.allclose([p.astype(np.float64).sum() for p in per_base], sums, rtol=1e-6)


@pytest.mark.parametrize("which", ["hdna", "evo2"])
def test_logits_agree_with_the_scores(which, request):
    model = request.getfixturevalue(which)
    seq = random_dna(200, 9)
    lg = model.logits(seq)
    assert lg.dtype == np.float32 and lg.shape[0] == 200
    assert lg.shape[1] == (16 if which == "hdna" else 512)
    m = lg.max(axis=1, keepdims=True)
    logp = lg - m - np.log(np.exp(lg - m).sum(axis=1, keepdims=True))
    ids = {"A": 7, "C": 8, "G": 9, "T": 10} if which == "hdna" else {c: ord(c) for c in "ACGT"}
    nxt = [ids[c] for c in seq[1:]]
    want = logp[np.arange(199), nxt]
    got = model.score(seq, reduce=None)[0]
    assert np.max(np.abs(got - want)) < 2e-4


@pytest.mark.parametrize("which,mode", [("hdna", "conv"), ("evo2", "recurrent"), ("evo2", "conv")])
def test_generate_equals_the_cli(which, mode, request, cli, hyenadna_dir, evo2_dir):
    model = request.getfixturevalue(which)
    d = hyenadna_dir if which == "hdna" else evo2_dir
    out = run_cli(cli, "generate", "--model", d, "--prompt", "ACGTTGCA", "--tokens", "24",
                  "--seed", "5", "--top-k", "4", "--temperature", "0.8", "--mode", mode,
                  "--json", "--precision", "f32")
    want = json.loads(out)["text"]
    got = model.generate("ACGTTGCA", 24, temperature=0.8, top_k=4, seed=5, mode=mode)
    assert got == want and len(got) == 24
    # Greedy is deterministic without a seed.
    assert model.generate("ACGT", 8, temperature=0.0) == model.generate("ACGT", 8, temperature=0.0)


def test_vep_equals_the_cli(evo2, tmp_path, cli, evo2_dir):
    genome = random_dna(3000, 11)
    ref = tmp_path / "ref.fa"
    ref.write_text(">chr1\n" + genome + "\n")
    lines = []
    for i, pos in enumerate([100, 1500, 1500, 2990]):
        r = genome[pos - 1]
        alt = "A" if r != "A" else "C"
        if i == 2:
            alt = "G" if r != "G" else "T"
        lines.append(f"chr1\t{pos}\t{r}\t{alt}\tv{i}")
    lines.append(f"chr1\t700\t{genome[699:702]}\t{genome[699]}\tdel")
    var = tmp_path / "v.tsv"
    var.write_text("\n".join(lines) + "\n")
    out = tmp_path / "cli.tsv"
    run_cli(cli, "vep", "--model", evo2_dir, "--reference", ref, "--variants", var,
            "--out", out, "--window", "256", "--precision", "f32")
    want = [l.split("\t") for l in out.read_text().splitlines() if not l.startswith("#")]
    rows = evo2.vep(ref, var, window=256, as_frame=False)
    assert len(rows) == len(want) == 5
    for r, w in zip(rows, want):
        assert [r["chrom"], str(r["pos"]), r["id"], r["ref"], r["alt"]] == w[:5]
        assert [r["ref_score"], r["alt_score"], r["delta"]] == [float(x) for x in w[7:10]]
    # With out=, the same TSV bytes as the CLI.
    mine = tmp_path / "py.tsv"
    evo2.vep(ref, var, window=256, out=mine, as_frame=False)
    # (The first line records the settings, which name the model as given.)
    assert mine.read_bytes().splitlines()[1:] == out.read_bytes().splitlines()[1:]
    pd = pytest.importorskip("pandas")
    df = evo2.vep(ref, var, window=256)
    assert isinstance(df, pd.DataFrame) and list(df["id"]) == ["v0", "v1", "v2", "v3", "del"]


def test_inputs_str_list_dict_and_paths_agree(hdna, fasta, dna_records):
    by_file = hdna.embed(fasta)
    by_list = hdna.embed(list(dna_records.values()))
    by_dict = hdna.embed(dna_records)
    by_str_path = hdna.embed(str(fasta))
    assert np.array_equal(by_file, by_list)
    assert np.array_equal(by_file, by_dict)
    assert np.array_equal(by_file, by_str_path)
    one = hdna.embed(dna_records["r2"])
    assert one.shape == (1, 64) and np.array_equal(one[0], by_file[1])
    assert hdna.score(dna_records["r2"]).shape == (1,)


def test_arrays_own_their_buffers_without_a_copy(hdna, dna_records):
    for a in [hdna.embed(dna_records), hdna.logits("ACGTACGT"), *hdna.embed("ACGT" * 10, pool=None),
              hdna.score(dna_records), *hdna.score(dna_records, reduce=None)]:
        # The engine's buffer, handed over: no NumPy array underneath (a copy or a view
        # would have one), contiguous and writeable.
        assert not isinstance(a.base, np.ndarray), type(a.base)
        assert a.base is not None
        assert a.flags.c_contiguous and a.flags.writeable and a.flags.aligned
    torch = pytest.importorskip("torch")
    a = hdna.embed(dna_records)
    t = torch.from_numpy(a)
    assert t.data_ptr() == a.ctypes.data  # the same memory
    t[0, 0] = 123.0
    assert a[0, 0] == 123.0


def test_threads(hdna):
    hyena.set_num_threads(1)
    try:
        assert hyena.get_num_threads() == 1
        one = hdna.embed("ACGT" * 50)
    finally:
        hyena.set_num_threads(None)
    assert hyena.get_num_threads() >= 1
    m = hyena.load("hyenadna-tiny", threads=1)
    assert m.threads == 1
    # The thread count does not change the numbers.
    assert np.array_equal(one, hdna.embed("ACGT" * 50))
    with pytest.raises(ValueError, match="threads"):
        hyena.set_num_threads(0)


def test_version_and_docstrings():
    assert hyena.__version__.count(".") == 2
    for f in [hyena.load, hyena.Model.embed, hyena.Model.score, hyena.Model.logits,
              hyena.Model.generate, hyena.Model.vep, hyena.train, hyena.finetune,
              hyena.distill, hyena.mad, hyena.set_num_threads, hyena.presets]:
        assert f.__doc__ and ">>>" in f.__doc__, f
