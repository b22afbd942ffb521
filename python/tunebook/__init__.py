"""tunebook: the Deep Learning Tuning Playbook as software.

Subpackages:
    tunebook.search       scrambled, shifted Halton sequences and search spaces.
    tunebook.optim        fused drop-in torch.optim replacements with in-kernel clipping.
    tunebook.checkpoints  keep the N best checkpoints of a run; rank trials.
    tunebook.study        studies and trials (ask/tell) over SQLite or PostgreSQL.
    tunebook.schedules    learning-rate schedules as pure functions of the step.
    tunebook.analysis     the playbook's plots and warnings, data separated from drawing.
    tunebook.report       the self-contained HTML study report (write_report).

The subpackages and the most used names are attributes of ``tunebook``, loaded on first
use (``tunebook.search.halton``), so ``import tunebook`` stays cheap: torch is imported
only when an optimizer or a checkpoint is touched.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "halton": "tunebook.search",
    "SearchSpace": "tunebook.search",
    "Study": "tunebook.study",
    "Trial": "tunebook.study",
    "CheckpointKeeper": "tunebook.checkpoints",
    "SGD": "tunebook.optim",
    "RMSprop": "tunebook.optim",
    "Adam": "tunebook.optim",
    "AdamW": "tunebook.optim",
    "NAdam": "tunebook.optim",
}

#: The subpackages, imported on first attribute access (``tunebook.search.halton``).
SUBPACKAGES = ("search", "optim", "checkpoints", "study", "schedules", "analysis", "report")

__all__ = ["__version__", *_EXPORTS, *SUBPACKAGES]


def __getattr__(name: str) -> Any:
    # PEP 562: names load on first use, so `import tunebook` imports neither torch nor SQLAlchemy.
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f"{__name__}.{name}")  # any public submodule, e.g. tunebook.playbook
    else:
        raise AttributeError(f"module 'tunebook' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
