"""Studies and trials: ask/tell over SQLite or PostgreSQL.

A :class:`Study` ties a search space, a seed and a storage URL together; trial ``i``
is point ``i`` of the space's Halton sequence. Workers anywhere call
:meth:`Study.ask` to claim the next trial atomically, report metrics per step, and
finish it as complete, infeasible or failed. A trial whose worker stops heartbeating
is given out again after its lease. Analysis reads :meth:`Study.trials`.
"""

from tunebook.study._schema import SCHEMA_VERSION, SchemaVersionError
from tunebook.study._storage import default_storage
from tunebook.study._study import Study, list_studies
from tunebook.study._trial import STATES, LeaseLostError, Trial, TrialRecord
from tunebook.study._url import StorageError

__all__ = [
    "SCHEMA_VERSION",
    "STATES",
    "LeaseLostError",
    "SchemaVersionError",
    "StorageError",
    "Study",
    "Trial",
    "TrialRecord",
    "default_storage",
    "list_studies",
]
