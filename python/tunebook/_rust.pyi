"""Type stubs for tunebook's Rust extension (built by maturin from rust/)."""

import numpy as np
import numpy.typing as npt

# --- ranking (rust/ranking.rs): NaN/±inf never rank; ties keep the earlier step. ---

class TopK:
    """The k best (step, value) pairs seen so far, best first."""

    def __init__(self, k: int, mode: str = "min", tie: str = "earlier") -> None: ...
    def offer(self, step: int, value: float) -> tuple[bool, list[int]]: ...
    def preview(self, step: int, value: float) -> tuple[bool, list[int]]: ...
    def resize(self, k: int) -> list[int]: ...
    def entries(self) -> list[tuple[int, float]]: ...
    def __contains__(self, step: int) -> bool: ...
    def __len__(self) -> int: ...
    @property
    def k(self) -> int: ...
    @property
    def mode(self) -> str: ...
    @property
    def tie(self) -> str: ...

def best_per_row(
    values: npt.NDArray[np.float64],
    offsets: npt.NDArray[np.int64],
    steps: npt.NDArray[np.int64] | None = None,
    mode: str = "min",
    tie: str = "earlier",
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]: ...
def rank(values: npt.NDArray[np.float64], mode: str = "min") -> npt.NDArray[np.int64]: ...
def bucket_edges(x: npt.NDArray[np.float64], bins: int, log: bool = False) -> npt.NDArray[np.float64]: ...
def best_per_bucket(
    x: npt.NDArray[np.float64],
    y: npt.NDArray[np.float64],
    edges: npt.NDArray[np.float64],
    mode: str = "min",
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]: ...
def bootstrap_best_of_k(
    best_values: npt.NDArray[np.float64],
    budgets: npt.NDArray[np.int64],
    n_boot: int,
    seed: int = 0,
    mode: str = "min",
) -> npt.NDArray[np.float64]: ...
def bootstrap_quantiles(
    best_values: npt.NDArray[np.float64],
    budgets: npt.NDArray[np.int64],
    n_boot: int,
    quantiles: npt.NDArray[np.float64],
    seed: int = 0,
    mode: str = "min",
) -> npt.NDArray[np.float64]: ...

# --- halton (rust/halton.rs): scrambled, b-adic-shifted Halton points, bit-stable. ---

HALTON_MAX_DIMENSION: int

def halton(n: int, d: int, seed: int = 0, start: int = 0) -> npt.NDArray[np.float64]: ...
