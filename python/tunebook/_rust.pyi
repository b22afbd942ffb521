"""Type stubs for tunebook's Rust extension (built by maturin from rust/)."""

import numpy as np
import numpy.typing as npt
