"""Shared fixtures of the Python tests: the repository's test models, the `hyena` command (the
CLI, built by `cargo build --release -p hyena-cli`; `HYENA_CLI` overrides its path) and small
inputs written to temporary files."""

import gzip
import os
import random
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "tests" / "fixtures"


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def hyenadna_dir() -> Path:
    """A tiny HyenaDNA checkpoint in the released Hugging Face layout."""
    return FIXTURES / "hyenadna" / "tiny-hf"


@pytest.fixture(scope="session")
def evo2_dir() -> Path:
    """A tiny random Evo 2 model as released files (vortex YAML + .pt)."""
    return FIXTURES / "evo2" / "tiny"


@pytest.fixture(scope="session")
def cli() -> Path:
    p = Path(os.environ.get("HYENA_CLI", ROOT / "target" / "release" / "hyena"))
    if not p.exists():
        pytest.fail(f"{p}: the hyena command is needed; build it with cargo build --release -p hyena-cli")
    return p


def run_cli(cli: Path, *args: str) -> str:
    r = subprocess.run([str(cli), *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, f"hyena {' '.join(map(str, args))}: {r.stderr}"
    return r.stdout


def random_dna(n: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice("ACGT") for _ in range(n))


@pytest.fixture(scope="session")
def dna_records():
    """Three records of different lengths (names and sequences)."""
    return {"r1": random_dna(300, 1), "r2": random_dna(77, 2), "r3": random_dna(513, 3)}


@pytest.fixture(scope="session")
def fasta(tmp_path_factory, dna_records) -> Path:
    p = tmp_path_factory.mktemp("fasta") / "recs.fa.gz"
    with gzip.open(p, "wt") as f:
        for k, v in dna_records.items():
            f.write(f">{k} description\n")
            for i in range(0, len(v), 60):
                f.write(v[i : i + 60] + "\n")
    return p
