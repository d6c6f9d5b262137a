"""hyena: Hyena-family long-convolution sequence models on the CPU, from Python.

HyenaDNA, Evo 2 / StripedHyena, distilled recurrences and the MAD tasks through the same
engine as the ``hyena`` command: the same models, the same numbers. Results are NumPy arrays
that own the engine's buffers (no copy; ``torch.from_numpy`` shares them too). Long calls
release the GIL and stop on Ctrl-C.

>>> import hyena
>>> model = hyena.load("hyenadna-tiny", seed=0)          # or a model directory
>>> model.score(["ACGTACGT", "GGGGCCCC"]).shape
(2,)
>>> model.embed("ACGTACGT").shape
(1, 128)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import _hyena
from ._errors import (
    HyenaError,
    HyenaFileExistsError,
    HyenaFileNotFoundError,
    HyenaMemoryError,
    HyenaOSError,
    HyenaPermissionError,
    HyenaRuntimeError,
    HyenaValueError,
)

__version__: str = _hyena.__version__

__all__ = [
    "HyenaError",
    "HyenaFileExistsError",
    "HyenaFileNotFoundError",
    "HyenaMemoryError",
    "HyenaOSError",
    "HyenaPermissionError",
    "HyenaRuntimeError",
    "HyenaValueError",
    "Model",
    "__version__",
    "distill",
    "finetune",
    "get_num_threads",
    "load",
    "mad",
    "presets",
    "set_num_threads",
    "train",
    "train_config",
]

#: What the sequence arguments take: one sequence, several (a list, or a dict of name to
#: sequence), or a FASTA/FASTQ file (plain, gzip or xz) given as a ``pathlib.Path`` or as a
#: string naming an existing file.
Sequences = Union[str, "os.PathLike[str]", Sequence[str], Mapping[str, str]]
#: A progress callback: called with a dict ``{"unit", "done", "total", "message"}``.
ProgressCallback = Callable[[Dict[str, Any]], None]
Progress = Union[None, bool, ProgressCallback]

_SEQ_CHARS = frozenset("ACGTNacgtnRYKMSWBDHVrykmswbdhv-*")


def _looks_like_path(s: str) -> bool:
    return (
        os.sep in s
        or "/" in s
        or s.endswith((".fa", ".fasta", ".fna", ".fq", ".fastq", ".gz", ".xz"))
    )


def _records(seqs: Sequences) -> Tuple[Optional[str], Optional[List[Tuple[str, bytes]]]]:
    """``(path, None)`` for a file, ``(None, [(name, bases), …])`` for sequences."""
    if isinstance(seqs, os.PathLike):
        p = os.fspath(seqs)
        if not os.path.exists(p):
            raise HyenaFileNotFoundError(2, f"{p}: no such FASTA/FASTQ file", p)
        return str(p), None
    if isinstance(seqs, (bytes, bytearray)):
        return None, [("seq0", bytes(seqs))]
    if isinstance(seqs, str):
        if os.path.isfile(seqs):
            return seqs, None
        if not set(seqs) <= _SEQ_CHARS and _looks_like_path(seqs):
            raise HyenaFileNotFoundError(
                2, f"{seqs}: no such FASTA/FASTQ file (and not a DNA sequence)", seqs
            )
        return None, [("seq0", seqs.encode())]
    if isinstance(seqs, Mapping):
        return None, [(str(k), _bases(v, str(k))) for k, v in seqs.items()]
    if isinstance(seqs, Sequence):
        return None, [(f"seq{i}", _bases(s, f"seq{i}")) for i, s in enumerate(seqs)]
    raise HyenaValueError(
        f"sequences: got {type(seqs).__name__}; give a str, a list of str, a dict of name to "
        "str, or a path to a FASTA/FASTQ file"
    )


def _bases(s: Any, name: str) -> bytes:
    if isinstance(s, str):
        return s.encode()
    if isinstance(s, (bytes, bytearray)):
        return bytes(s)
    raise HyenaValueError(f"sequence {name}: got {type(s).__name__}, expected str")


def _in_notebook() -> bool:
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


class _Bar:
    """A tqdm bar driven by the engine's progress events (tqdm.auto: a widget in notebooks)."""

    def __init__(self, desc: str) -> None:
        from tqdm.auto import tqdm  # type: ignore[import-not-found, import-untyped, unused-ignore]

        self.bar = tqdm(desc=desc, total=None, leave=False)

    def __call__(self, e: Dict[str, Any]) -> None:
        if e["unit"] in ("info", "eval"):
            if e["message"]:
                self.bar.write(e["message"])
            return
        if e["total"]:
            self.bar.total = e["total"]
        self.bar.n = e["done"]
        self.bar.unit = " " + e["unit"]
        if e["message"]:
            self.bar.set_postfix_str(e["message"], refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def _progress(progress: Progress, desc: str) -> Tuple[Optional[ProgressCallback], Callable[[], None]]:
    """The callback for ``progress`` and what closes it: a callable as given; ``True`` or
    ``None`` in a notebook or a terminal: a tqdm bar when tqdm is installed; else none."""
    if callable(progress):
        return progress, lambda: None
    if progress is False:
        return None, lambda: None
    if progress is None and not (_in_notebook() or sys.stderr.isatty()):
        return None, lambda: None
    try:
        bar = _Bar(desc)
    except ImportError:
        return None, lambda: None
    return bar, bar.close


def _with_progress(progress: Progress, desc: str, call: Callable[[Optional[ProgressCallback]], Any]) -> Any:
    cb, close = _progress(progress, desc)
    try:
        return call(cb)
    finally:
        close()


class Model:
    """A loaded model (any family the ``hyena`` command loads); see :func:`load`.

    Method names follow the Evo 2 Python API where one exists (``score_sequences`` is
    :meth:`score`). Sequence arguments take a str, a list of str, a dict of name to str, or a
    FASTA/FASTQ path (plain, gzip or xz; streamed one record at a time).
    """

    def __init__(self, inner: _hyena.Model) -> None:
        self._m = inner

    @property
    def family(self) -> str:
        """The family's registry name: ``hyenadna``, ``evo2``, ``zoo``, ``classifier``, …"""
        return self._m.family

    @property
    def source_format(self) -> str:
        """How its directory was read: ``hyenadna`` (a hyena run), ``hyenadna-released`` (a
        released checkpoint), ``evo2``, …"""
        return self._m.source_format

    @property
    def config(self) -> Dict[str, Any]:
        """The model's configuration as a dict: ``config["model"]`` in hyena's terms (what a
        run's ``config.json`` holds); a released checkpoint's own file under ``"source"``."""
        return self._m.config  # type: ignore[no-any-return]

    @property
    def path(self) -> Optional[Path]:
        """The directory it was loaded from (``None`` for a preset)."""
        p = self._m.path
        return None if p is None else Path(p)

    @property
    def precision(self) -> str:
        """Arithmetic of the matrix products: ``"f32"`` or ``"bf16"``."""
        return self._m.precision

    @property
    def d_model(self) -> int:
        """Width of the hidden states."""
        return self._m.d_model

    @property
    def n_layer(self) -> int:
        """Number of blocks."""
        return self._m.n_layer

    @property
    def vocab_size(self) -> int:
        """Real vocabulary size."""
        return self._m.vocab_size

    @property
    def max_len(self) -> int:
        """Longest sequence the model takes (tokens)."""
        return self._m.max_len

    @property
    def tokenizer(self) -> str:
        """``"nucleotide"`` (HyenaDNA's ids) or ``"bytes"`` (StripedHyena / Evo 2)."""
        return self._m.tokenizer

    @property
    def notes(self) -> List[str]:
        """What loading found worth telling (skipped checkpoint entries, warnings)."""
        return self._m.notes

    @property
    def threads(self) -> int:
        """Worker threads this model's calls run on."""
        return self._m.threads

    def __repr__(self) -> str:
        return repr(self._m)

    def embed(
        self,
        seqs: Sequences,
        layer: Union[None, int, str] = None,
        pool: Optional[str] = "mean",
        *,
        chunk: Optional[int] = None,
        uppercase: bool = False,
        unknown_as_unk: bool = False,
        special_tokens: bool = False,
        progress: Progress = None,
    ) -> Union[np.ndarray, List[np.ndarray]]:
        """Hidden states of each sequence (``hyena embed``).

        ``layer``: ``None`` (the final states after the last norm, as HyenaDNA's backbone
        returns them), a block count (``0`` = token embeddings) or, for Evo 2, a module name of
        the reference such as ``"blocks.28.mlp.l3"``. ``pool``: ``"mean"`` or ``"last"`` give
        one float32 row per sequence, ``[n, d]``; ``None`` gives a list of ``[L_i, d]`` arrays.
        ``chunk``: positions per pass (memory only; the results do not change).

        >>> model.embed(["ACGT" * 100, "GATTACA"]).shape
        (2, 128)
        """
        path, recs = _records(seqs)
        out, _, _ = _with_progress(
            progress,
            "embed",
            lambda cb: self._m._embed(
                path=path,
                seqs=recs,
                layer=layer,
                pool="none" if pool is None else pool,
                chunk=chunk,
                uppercase=uppercase,
                unknown_as_unk=unknown_as_unk,
                special_tokens=special_tokens,
                progress=cb,
            ),
        )
        return out  # type: ignore[no-any-return]

    def score(
        self,
        seqs: Sequences,
        reduce: Optional[str] = "mean",
        rc_average: bool = False,
        *,
        chunk: Optional[int] = None,
        uppercase: bool = False,
        unknown_as_unk: bool = False,
        special_tokens: bool = False,
        progress: Progress = None,
    ) -> Union[np.ndarray, List[np.ndarray]]:
        """Log-likelihood of each sequence, each base given the ones before it (``hyena
        score``; the first base has no prediction).

        ``reduce="mean"`` (the Evo 2 package's default) or ``"sum"``: a float64 array ``[n]``
        of natural-log scores (float64 because the engine sums in f64; the same numbers as
        ``hyena score --json``). ``reduce=None``: a list of float32 arrays ``[L_i - 1]``, the
        log-probability of every base after the first. ``rc_average``: average with the
        reverse complement's score.

        >>> model.score(["ACGTACGT", "AAAAAAAA"], reduce="sum").shape
        (2,)
        """
        path, recs = _records(seqs)
        scores, per_base, _ = _with_progress(
            progress,
            "score",
            lambda cb: self._m._score(
                path=path,
                seqs=recs,
                reduce="none" if reduce is None else reduce,
                rc_average=rc_average,
                chunk=chunk,
                uppercase=uppercase,
                unknown_as_unk=unknown_as_unk,
                special_tokens=special_tokens,
                progress=cb,
            ),
        )
        return per_base if reduce is None else scores  # type: ignore[no-any-return]

    def logits(
        self,
        seq: str,
        *,
        chunk: Optional[int] = None,
        uppercase: bool = False,
        unknown_as_unk: bool = False,
    ) -> np.ndarray:
        """Logits ``[L, V]`` (float32) of every position of one sequence: row ``t`` predicts
        token ``t + 1``. ``V`` is the width of the output head (HyenaDNA: the padded
        vocabulary, as the reference's ``lm_head``; Evo 2: 512).

        >>> model.logits("ACGTACGT").shape
        (8, 16)
        """
        if not isinstance(seq, str):
            raise HyenaValueError(f"seq: got {type(seq).__name__}, expected one str")
        return self._m._logits(  # type: ignore[no-any-return]
            seq.encode(), chunk=chunk, uppercase=uppercase, unknown_as_unk=unknown_as_unk
        )

    def generate(
        self,
        prompt: str,
        n_tokens: int,
        temperature: float = 1.0,
        top_k: int = 4,
        seed: Optional[int] = None,
        mode: str = "auto",
    ) -> str:
        """Sample ``n_tokens`` after ``prompt`` and return them (``hyena generate``).

        ``temperature=0`` is greedy; ``top_k=0`` samples among all tokens; ``seed=None`` draws
        a fresh seed. ``mode``: ``"recurrent"`` (prefill, then one step per token from the
        carried state: FIR caches, modal states, key/value cache), ``"conv"`` (the full forward
        per token) or ``"auto"`` (recurrent for Evo 2 / StripedHyena).

        >>> len(model.generate("ACGT", 10, seed=0))
        10
        """
        return self._m.generate(prompt, n_tokens, temperature, top_k, seed, mode)

    def vep(
        self,
        reference_fasta: Union[str, "os.PathLike[str]"],
        variants: Union[str, "os.PathLike[str]"],
        window: int = 8192,
        *,
        reduce: str = "mean",
        uppercase: bool = True,
        share: bool = True,
        out: Union[None, str, "os.PathLike[str]"] = None,
        resume: bool = False,
        chunk: Optional[int] = None,
        as_frame: Optional[bool] = None,
        progress: Progress = None,
    ) -> Any:
        """Variant-effect scores (``hyena vep``): for each SNV or small indel of a VCF or a
        ``chrom pos ref alt [id]`` TSV, the score of the reference window centred on it with
        the alternative allele minus with the reference allele.

        Returns a pandas DataFrame when pandas is installed (``as_frame=False``: a list of
        dicts) with the columns of ``hyena vep``'s TSV: chrom, pos, id, ref, alt, window_start,
        window_len, ref_score, alt_score, delta. ``out``: also write that TSV (through
        ``OUT.partial``, renamed when complete; ``resume=True`` continues it).

        >>> df = model.vep("ref.fa", "variants.vcf", window=8192)  # doctest: +SKIP
        >>> df.sort_values("delta").head()  # doctest: +SKIP
        """
        rows = _with_progress(
            progress,
            "vep",
            lambda cb: self._m._vep(
                os.fspath(reference_fasta),
                os.fspath(variants),
                window=window,
                reduce=reduce,
                uppercase=uppercase,
                share=share,
                out=None if out is None else os.fspath(out),
                resume=resume,
                chunk=chunk,
                progress=cb,
            ),
        )
        if as_frame is False:
            return rows
        try:
            import pandas as pd  # type: ignore[import-untyped, import-not-found, unused-ignore]
        except ImportError:
            if as_frame:
                raise
            return rows
        return pd.DataFrame(rows, columns=_VEP_COLUMNS)


_VEP_COLUMNS = [
    "chrom",
    "pos",
    "id",
    "ref",
    "alt",
    "window_start",
    "window_len",
    "ref_score",
    "alt_score",
    "delta",
]


def load(
    path_or_preset: Union[str, "os.PathLike[str]"],
    precision: str = "auto",
    threads: Optional[int] = None,
    *,
    kv: str = "auto",
    seed: int = 0,
) -> Model:
    """Load a model: a directory the ``hyena`` command loads (a ``hyena train``, ``finetune``
    or ``distill`` run; a released HyenaDNA checkpoint in HF or Lightning layout; released
    Evo 2 / StripedHyena files, a vortex YAML beside ``NAME.pt``; what ``hyena convert`` made
    of them), or a preset name (:func:`presets`: a fresh model of a released HyenaDNA shape,
    initialised from ``seed``).

    ``precision``: ``"f32"`` (exact), ``"bf16"`` (Evo 2 / StripedHyena matrix products with
    bf16 inputs) or ``"auto"`` (bf16 where the CPU multiplies bf16 natively and the model has
    a bf16 path). ``threads``: worker threads for this model's calls (default: see
    :func:`set_num_threads`). ``kv``: precision of the attention key/value cache.

    >>> model = hyena.load("runs/train")
    >>> model.family
    'hyenadna'
    """
    return Model(_hyena.load(os.fspath(path_or_preset), precision, threads, kv, seed))


def presets() -> Dict[str, str]:
    """The preset names :func:`load` and :func:`finetune` take, with what each is.

    >>> "hyenadna-tiny" in hyena.presets()
    True
    """
    return dict(_hyena.presets())


def set_num_threads(n: Optional[int]) -> None:
    """Worker threads of every later call (``None``: all cores). A model loaded with
    ``threads=`` keeps its own.

    >>> hyena.set_num_threads(2)
    """
    _hyena.set_num_threads(n)


def get_num_threads() -> int:
    """Worker threads a call uses now.

    >>> hyena.get_num_threads() >= 1
    True
    """
    return _hyena.get_num_threads()


def train_config(preset: Optional[str] = None) -> Dict[str, Any]:
    """The run config :func:`train` starts from: the quick-start run (a small Hyena LM on the
    E. coli genome shipped with the project), or a preset's. Edit it and pass it to
    :func:`train`.

    >>> cfg = hyena.train_config(); cfg["train"]["steps"] = 50
    """
    return _hyena.train_config(preset)  # type: ignore[no-any-return]


def train(
    config: Union[None, Dict[str, Any], str, "os.PathLike[str]"] = None,
    out: Union[str, "os.PathLike[str]"] = "runs/train",
    *,
    resume: bool = False,
    force: bool = False,
    progress: Progress = None,
) -> Dict[str, Any]:
    """Train a language model (``hyena train``) into the run directory ``out``: checkpoint,
    ``metrics.jsonl``, ``loss.png``. ``config``: a dict (see :func:`train_config`), a JSON
    file, or ``None`` for the quick-start run. ``resume=True`` continues the run in ``out``
    exactly; ``force=True`` replaces it. Returns ``{"out", "eval", "baselines", "config"}``:
    the last validation record and the baselines' bits per token.

    >>> cfg = hyena.train_config(); cfg["train"]["steps"] = 20
    >>> hyena.train(cfg, "runs/quick")["eval"]["bits_per_token"]  # doctest: +SKIP
    """
    cfg = config if isinstance(config, dict) or config is None else os.fspath(config)
    return _with_progress(  # type: ignore[no-any-return]
        progress,
        "train",
        lambda cb: _hyena.train(cfg, os.fspath(out), resume, force, cb),
    )


def finetune(
    data: Union[str, "os.PathLike[str]"],
    out: Union[str, "os.PathLike[str]"] = "runs/finetune",
    *,
    model: Union[None, str, "os.PathLike[str]"] = None,
    preset: Optional[str] = None,
    test_csv: Union[None, str, "os.PathLike[str]"] = None,
    config: Optional[Dict[str, Any]] = None,
    progress: Progress = None,
) -> Dict[str, Any]:
    """Fine-tune a sequence classifier (``hyena finetune``) on a labelled dataset (a
    GenomicBenchmarks-layout directory, a directory with train.csv and test.csv, or a CSV),
    from a pretrained backbone ``model`` or a fresh ``preset``. ``config``: settings of the
    run (``epochs``, ``batch_size``, ``max_len``, ``pool``, ``optim``, ``seed``,
    ``train_limit``, …; the keys of the CLI's config). Returns ``eval.json``: ``classes``,
    ``steps`` and the ``test`` record (accuracy, per-class scores, confusion matrix).

    >>> ev = hyena.finetune("task.csv", "runs/ft", preset="hyenadna-tiny",
    ...                     config={"epochs": 2.0})  # doctest: +SKIP
    >>> ev["test"]["accuracy"]  # doctest: +SKIP
    """
    return _with_progress(  # type: ignore[no-any-return]
        progress,
        "finetune",
        lambda cb: _hyena.finetune(
            os.fspath(data),
            os.fspath(out),
            None if model is None else os.fspath(model),
            preset,
            None if test_csv is None else os.fspath(test_csv),
            config,
            cb,
        ),
    )


def distill(
    model: Union[str, "os.PathLike[str]"],
    out: Union[str, "os.PathLike[str]"] = "runs/distill",
    *,
    config: Optional[Dict[str, Any]] = None,
    progress: Progress = None,
) -> Dict[str, Any]:
    """Distil the long convolutions of a trained HyenaDNA model into modal recurrences
    (``hyena distill``); ``out`` gets the distilled model (load it and generate with
    ``mode="recurrent"``) and its report. ``config``: ``order`` or ``tol``, ``max_order``,
    ``refine_steps``, ``lr``, ``max_hankel``. Returns the report (``distill_report.json``).

    >>> rep = hyena.distill("runs/train", "runs/distill", config={"order": 16})  # doctest: +SKIP
    >>> hyena.load("runs/distill").generate("ACGT", 100, mode="recurrent")  # doctest: +SKIP
    """
    return _with_progress(  # type: ignore[no-any-return]
        progress,
        "distill",
        lambda cb: _hyena.distill(os.fspath(model), os.fspath(out), config, cb),
    )


def mad(
    arch: str,
    tasks: Optional[Sequence[str]] = None,
    quick: bool = True,
    *,
    out: Union[None, str, "os.PathLike[str]"] = None,
    epochs: Optional[int] = None,
    seed: int = 0,
    d_model: Optional[int] = None,
    budget: Optional[int] = None,
    progress: Progress = None,
) -> Dict[str, Any]:
    """MAD synthetic capability tests (``hyena mad``) of the architecture ``arch`` (layers
    separated by commas, e.g. ``"hyena,swiglu,hyena,swiglu"``, or an architecture JSON file)
    on ``tasks`` (default: all six). ``quick``: the baseline settings only; ``epochs``,
    ``budget`` (training tokens per run, 0 = none), ``d_model`` and ``seed`` as the CLI's
    flags. Returns the report
    (what ``results.json`` holds for it: per-task scores, overall score, parameters); ``out``
    also writes ``results.json``, ``results.csv`` and ``mad.png`` there.

    >>> r = hyena.mad("hyena,swiglu", ["in-context-recall"], epochs=1)  # doctest: +SKIP
    """
    return _with_progress(  # type: ignore[no-any-return]
        progress,
        "mad",
        lambda cb: _hyena.mad(
            arch,
            None if tasks is None else list(tasks),
            quick,
            None if out is None else os.fspath(out),
            epochs,
            seed,
            d_model,
            budget,
            cb,
        ),
    )
