"""Studies and trials: ask/tell over SQLite, PostgreSQL or memory.

A :class:`Study` ties a search space, a seed and a storage together; its quasi-random
trials are the points of the space's Halton sequence, its replicates
(:meth:`Study.rerun`) retrain a trial with other seeds, and its exploitation trials
(:meth:`Study.exploit`) come from Bayesian optimisation. Workers anywhere call :meth:`Study.ask` to
claim the next trial atomically, report metrics per step, and finish it as complete,
infeasible or failed. A trial whose worker stops heartbeating is given out again after
its lease. Analysis reads :meth:`Study.trials`.

``Study`` and ``Trial`` hold the domain rules; persistence sits behind one interface,
:class:`StudyStorage` (its contract is written in ``tunebook/study/_contract.py``),
with SQL (SQLite, PostgreSQL) and in-memory implementations chosen by
:func:`open_storage` from the storage URL.
"""

from tunebook.study._contract import (
    LeaseLostError,
    ReadOnlyStorageError,
    StudyExistsError,
    StudyStorage,
)
from tunebook.study._memory import InMemoryStorage
from tunebook.study._roles import Roles
from tunebook.study._round import Conclusion
from tunebook.study._schema import SCHEMA_VERSION, SchemaVersionError
from tunebook.study._storage import default_storage, open_storage
from tunebook.study._study import Study, list_studies
from tunebook.study._trial import STATES, Trial, TrialRecord
from tunebook.study._url import StorageError

__all__ = [
    "SCHEMA_VERSION",
    "STATES",
    "Conclusion",
    "InMemoryStorage",
    "LeaseLostError",
    "ReadOnlyStorageError",
    "Roles",
    "SchemaVersionError",
    "StorageError",
    "Study",
    "StudyExistsError",
    "StudyStorage",
    "Trial",
    "TrialRecord",
    "default_storage",
    "list_studies",
    "open_storage",
]
