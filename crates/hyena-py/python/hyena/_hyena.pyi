# Type stubs of the native module (src/*.rs); CI checks them against the built module with
# mypy's stubtest.
from typing import Any, Callable, Dict, List, Optional, Tuple, Union, final

import numpy as np

__version__: str
__all__ = [
    "__version__",
    "Model",
    "load",
    "presets",
    "set_num_threads",
    "get_num_threads",
    "train",
    "train_config",
    "finetune",
    "distill",
    "mad",
]

_Callback = Optional[Callable[[Dict[str, Any]], None]]

@final
class Model:
    @property
    def family(self) -> str: ...
    @property
    def source_format(self) -> str: ...
    @property
    def config(self) -> Any: ...
    @property
    def path(self) -> Optional[str]: ...
    @property
    def precision(self) -> str: ...
    @property
    def d_model(self) -> int: ...
    @property
    def n_layer(self) -> int: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def max_len(self) -> int: ...
    @property
    def tokenizer(self) -> str: ...
    @property
    def notes(self) -> List[str]: ...
    @property
    def threads(self) -> int: ...
    def _embed(
        self,
        path: Optional[str] = None,
        seqs: Optional[List[Tuple[str, bytes]]] = None,
        layer: Union[None, int, str] = None,
        pool: str = "mean",
        chunk: Optional[int] = None,
        residual: str = "auto",
        uppercase: bool = False,
        unknown_as_unk: bool = False,
        special_tokens: bool = False,
        progress: _Callback = None,
    ) -> Tuple[Union[np.ndarray, List[np.ndarray]], List[str], List[int]]: ...
    def _score(
        self,
        path: Optional[str] = None,
        seqs: Optional[List[Tuple[str, bytes]]] = None,
        reduce: str = "mean",
        rc_average: bool = False,
        chunk: Optional[int] = None,
        residual: str = "auto",
        uppercase: bool = False,
        unknown_as_unk: bool = False,
        special_tokens: bool = False,
        progress: _Callback = None,
    ) -> Tuple[Optional[np.ndarray], Optional[List[np.ndarray]], List[str]]: ...
    def _logits(
        self,
        seq: bytes,
        chunk: Optional[int] = None,
        uppercase: bool = False,
        unknown_as_unk: bool = False,
    ) -> np.ndarray: ...
    def generate(
        self,
        prompt: str,
        n_tokens: int,
        temperature: float = 1.0,
        top_k: int = 4,
        seed: Optional[int] = None,
        mode: str = "auto",
    ) -> str: ...
    def _vep(
        self,
        reference: str,
        variants: str,
        window: int = 8192,
        reduce: str = "mean",
        uppercase: bool = True,
        share: bool = True,
        out: Optional[str] = None,
        resume: bool = False,
        chunk: Optional[int] = None,
        progress: _Callback = None,
    ) -> List[Dict[str, Any]]: ...

def load(
    path: str,
    precision: str = "auto",
    threads: Optional[int] = None,
    kv: str = "auto",
    seed: int = 0,
) -> Model: ...
def presets() -> List[Tuple[str, str]]: ...
def set_num_threads(n: Optional[int]) -> None: ...
def get_num_threads() -> int: ...
def train_config(preset: Optional[str] = None) -> Any: ...
def train(
    config: Union[None, Dict[str, Any], str] = None,
    out: str = "runs/train",
    resume: bool = False,
    force: bool = False,
    progress: _Callback = None,
) -> Any: ...
def finetune(
    data: str,
    out: str = "runs/finetune",
    model: Optional[str] = None,
    preset: Optional[str] = None,
    test_csv: Optional[str] = None,
    config: Optional[Dict[str, Any]] = None,
    progress: _Callback = None,
) -> Any: ...
def distill(
    model: str,
    out: str = "runs/distill",
    config: Optional[Dict[str, Any]] = None,
    progress: _Callback = None,
) -> Any: ...
def mad(
    arch: str,
    tasks: Optional[List[str]] = None,
    quick: bool = True,
    out: Optional[str] = None,
    epochs: Optional[int] = None,
    seed: int = 0,
    d_model: Optional[int] = None,
    budget: Optional[int] = None,
    progress: _Callback = None,
) -> Any: ...
