"""A notebook-style tour of the `hyena` Python package (run it as a script, or cell by cell).

Install the package first (from the repository root):

    pip install ./crates/hyena-py

Then: load a model, embed and score E. coli sequences from the genome shipped in data/, and,
if scikit-learn is installed, fit a logistic regression on the embeddings of a small labelled
task (real E. coli windows against the same windows with their bases shuffled) and print its
accuracy. A model trained by `hyena train` (runs/train) is used when there is one; otherwise a
fresh HyenaDNA-tiny-shaped model, whose embeddings are random features but still separate the
two classes.
"""

# %% Load a model
import gzip
import random
import sys
import time
from pathlib import Path

import numpy as np

import hyena

ROOT = Path(__file__).resolve().parents[1]
run = ROOT / "runs" / "train"
model = hyena.load(run) if (run / "config.json").exists() else hyena.load("hyenadna-tiny", seed=0)
print(f"hyena {hyena.__version__}: {model!r}, {model.threads} threads")

# %% Read the E. coli genome shipped in data/ (one record, 4.6 Mbp)
with gzip.open(ROOT / "data" / "ecoli" / "MG1655-K12.fasta.gz", "rt") as f:
    genome = "".join(line.strip() for line in f if not line.startswith(">")).upper()
print(f"E. coli K-12: {len(genome):,} bases")

# %% Embed and score a few windows
rng = random.Random(0)
L = 512
starts = [rng.randrange(len(genome) - L) for _ in range(200)]
real = [genome[s : s + L] for s in starts]
shuffled = ["".join(rng.sample(w, len(w))) for w in real]

t0 = time.perf_counter()
emb = model.embed(real + shuffled)  # [400, d_model] float32, mean-pooled
scores = model.score(real + shuffled, reduce="mean")  # [400] mean log-likelihood per base
print(f"embedded and scored {len(emb)} windows of {L} bases in {time.perf_counter() - t0:.1f} s")
print(f"mean log-likelihood per base: real {scores[:200].mean():.4f}, shuffled {scores[200:].mean():.4f}")

# %% A small labelled task: real against shuffled windows
labels = np.array([1] * len(real) + [0] * len(shuffled))
try:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
except ImportError:
    print("scikit-learn is not installed: pip install scikit-learn to fit the classifier")
    sys.exit(0)
x_tr, x_te, y_tr, y_te = train_test_split(emb, labels, test_size=0.3, random_state=0, stratify=labels)
clf = LogisticRegression(max_iter=2000).fit(x_tr, y_tr)
print(f"logistic regression on the embeddings: test accuracy {clf.score(x_te, y_te):.3f} "
      f"({len(y_te)} windows, chance 0.5)")
