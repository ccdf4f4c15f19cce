"""optuna's RDBStorage, made to survive database restarts and to do less per trial.

:func:`hpo.storage.build_storage` builds its RDB storages from the class made here. It

- retries every call that fails on a lost connection with exponential backoff (``retrying``);
- writes what every trial writes (reports, new user attrs, heartbeats) in one statement each
  instead of optuna's transaction of several queries;
- refuses every call (:class:`~hpo.errors.StorageLostError`) once its SQLite file was deleted
  or replaced: the open connections would otherwise go on writing to a file nobody can see;
- counts a study's trials in one query (:func:`trial_counts`) and, on PostgreSQL and MySQL,
  counts and creates a trial in one short transaction under the study's row lock
  (``create_trial_if``): a worker takes a trial in four statements, whatever the trial count.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING
from typing import Any
from typing import TypeVar

from hpo.errors import StorageLostError
from hpo.redact import redact_any

if TYPE_CHECKING:
    import optuna

__all__ = ["is_connection_error", "rdb_backend", "retrying", "retrying_rdb_class", "trial_counts"]

_LOG = logging.getLogger("hpo")
_T = TypeVar("_T")

# RDBStorage methods that open their own transaction, and so may be retried as a whole. The
# private ones are what optuna's _CachedStorage (the wrapper every Study uses) calls.
_RETRIED_METHODS = (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions",
    "get_study_user_attrs", "get_study_system_attrs", "get_trial_user_attrs",
    "get_trial_system_attrs", "get_all_studies", "create_new_trial", "set_trial_param",
    "get_trial_param", "set_trial_state_values", "set_trial_intermediate_value",
    "set_trial_user_attr", "set_trial_system_attr", "get_trial_id_from_study_id_trial_number",
    "get_trial", "get_all_trials", "get_best_trial", "record_heartbeat", "get_current_version",
    "_create_new_trial", "_set_trial_param", "_get_trials", "_get_best_trial_id",
)


def is_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` means "the database is (for now) unreachable or busy": worth a retry."""
    import optuna
    import sqlalchemy.exc

    if isinstance(
        exc,
        sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError | sqlalchemy.exc.TimeoutError,
    ):
        return True
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, sqlalchemy.exc.PendingRollbackError):
        # A session whose connection died mid-transaction (a server restart) refuses every
        # later statement until rolled back. The retry drops the session (``on_retry``) and
        # runs on a new one; seen in the soak test as trials failed by a PostgreSQL restart.
        return True
    if isinstance(exc, optuna.exceptions.StorageInternalError):
        cause = exc.__cause__
        return cause is not None and is_connection_error(cause)
    return False


def retrying(
    fn: Callable[..., _T],
    seconds: Callable[[], float],
    on_retry: Callable[[], None] | None = None,
) -> Callable[..., _T]:
    """Wrap ``fn`` to retry on connection errors with exponential backoff for ``seconds()``.

    Other errors are raised at once. ``on_retry`` runs before each new attempt (e.g. to drop a
    session that holds a dead connection).
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> _T:
        deadline = time.monotonic() + seconds()
        delay = 0.25
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if not is_connection_error(exc) or time.monotonic() + delay > deadline:
                    raise
                cause = exc.__cause__ or exc
                detail = str(getattr(cause, "orig", None) or cause).strip().splitlines()
                _LOG.warning(
                    "storage unreachable (%s: %s); retrying in %.1f s",
                    type(cause).__name__,
                    redact_any(detail[0])[:200] if detail else "",
                    delay,
                )
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
                if on_retry is not None:
                    with contextlib.suppress(Exception):
                        on_retry()

    return wrapper


def _make_retrying_class() -> type:
    """An RDBStorage whose calls survive a database restart (retry with backoff)."""
    import optuna
    import sqlalchemy
    import sqlalchemy.exc
    from optuna.trial import TrialState

    from hpo._optuna import rdb_models

    models = rdb_models()
    base = optuna.storages.RDBStorage

    # Statements built once, with bind parameters: SQLAlchemy then compiles each once per
    # engine, instead of building and compiling a new statement per report.
    @functools.cache
    def _insert_statement(table: Any, columns: tuple[str, ...]) -> Any:
        trial = models.TrialModel
        select = sqlalchemy.select(
            *(sqlalchemy.bindparam(f"v_{k}", type_=table.c[k].type) for k in columns)
        ).where(trial.trial_id == sqlalchemy.bindparam("running_trial_id"),
                trial.state == TrialState.RUNNING)
        return table.insert().from_select(list(columns), select)

    @functools.cache
    def _stale_query() -> Any:
        trial = models.TrialModel
        beat = models.TrialHeartbeatModel
        return (
            sqlalchemy.select(trial.trial_id, beat.heartbeat, sqlalchemy.func.now())
            .outerjoin(beat, beat.trial_id == trial.trial_id)
            .where(trial.study_id == sqlalchemy.bindparam("study_id"),
                   trial.state == TrialState.RUNNING)
        )

    @functools.cache
    def _beat_statements() -> tuple[Any, Any]:
        beat = models.TrialHeartbeatModel.__table__
        trial_id = sqlalchemy.bindparam("beat_trial_id")
        insert = beat.insert().values(trial_id=trial_id, heartbeat=sqlalchemy.func.now())
        update = beat.update().where(beat.c.trial_id == trial_id).values(
            heartbeat=sqlalchemy.func.now())
        return insert, update  # indexed by "has a heartbeat row already"

    @functools.cache
    def _take_statements() -> tuple[Any, Any]:
        # FOR NO KEY UPDATE on PostgreSQL (FOR UPDATE elsewhere): conflicts with every trial
        # creator, ours and optuna's own FOR UPDATE, but not with inserts that only reference
        # the study row (study attrs).
        study = models.StudyModel
        lock = (sqlalchemy.select(study.study_id)
                .where(study.study_id == sqlalchemy.bindparam("study_id"))
                .with_for_update(key_share=True))
        insert = models.TrialModel.__table__.insert().values(
            number=sqlalchemy.bindparam("number"), study_id=sqlalchemy.bindparam("study_id"),
            state=TrialState.RUNNING, datetime_start=sqlalchemy.bindparam("start"))
        return lock, insert

    @functools.cache
    def _finish_statements() -> tuple[Any, Any]:
        trials = models.TrialModel.__table__
        finish = (trials.update()
                  .where(trials.c.trial_id == sqlalchemy.bindparam("finish_trial_id"),
                         trials.c.state == TrialState.RUNNING)
                  .values(state=sqlalchemy.bindparam("new_state"),
                          datetime_complete=sqlalchemy.bindparam("complete")))
        return finish, models.TrialValueModel.__table__.insert()

    class _RetryingRDBStorage(base):  # type: ignore[misc, valid-type]
        _hpo_retry_seconds = 300.0

        def __init__(self, *args: Any, retry_seconds: float = 300.0, **kwargs: Any) -> None:
            self._hpo_retry_seconds = retry_seconds
            self._hpo_no_heartbeat: dict[int, float] = {}  # trial id -> first seen (monotonic)
            self._hpo_beating: set[int] = set()  # trials whose heartbeat row exists
            self._hpo_user_attrs: set[tuple[int, str]] = set()  # (trial id, key) rows written
            self._hpo_fresh: tuple[int, Any] | None = None  # the trial created last, unread
            self._hpo_lock = threading.Lock()
            self._hpo_file: tuple[str, str, int, int] | None = None  # see watch_file
            super().__init__(*args, **kwargs)

        def watch_file(self, path: str) -> None:
            """Refuse every later call once the SQLite file ``path`` is deleted or replaced.

            SQLite's open connections keep writing to a deleted file (its inode lives on while
            they hold it): trials would be reported complete and then be gone.
            """
            stat = os.stat(path)
            self._hpo_file = (path, os.path.abspath(path), stat.st_dev, stat.st_ino)

        def check_file(self) -> None:
            """Raise StorageLostError if the watched SQLite file is not the one opened."""
            watched = self._hpo_file
            if watched is None:
                return
            shown, path, dev, ino = watched
            try:
                stat = os.stat(path)
                same = (stat.st_dev, stat.st_ino) == (dev, ino)
            except OSError:
                same = False
            if not same:
                raise StorageLostError(
                    f"the SQLite file {shown} was deleted or replaced during the run; results of "
                    "this run could not be stored"
                )

        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            # One query instead of optuna's two, and RUNNING trials without any heartbeat (their
            # worker died right after creating them) count as stale once seen so for a grace
            # period on this process's own clock: they would otherwise stay RUNNING forever.
            grace = self.grace_period or 2 * (self.heartbeat_interval or 0)
            with self.engine.connect() as conn:
                rows = conn.execute(_stale_query(), {"study_id": study_id}).all()
            stale, now_mono = [], time.monotonic()
            with self._hpo_lock:
                seen = {}
                for trial_id, heartbeat, now in rows:
                    if heartbeat is None:
                        first = self._hpo_no_heartbeat.get(trial_id, now_mono)
                        seen[trial_id] = first
                        if now_mono - first > grace:
                            stale.append(trial_id)
                    elif (now.replace(tzinfo=None) - heartbeat).total_seconds() > grace:
                        stale.append(trial_id)
                self._hpo_no_heartbeat = seen
            return stale

        # --- fewer round trips for what every trial does ---------------------------------
        # optuna runs each write below as a transaction of two to four queries (find the trial,
        # check that it is RUNNING, look for the row, insert or update). With ten reports that
        # is most of a trial's storage time. Writes of a new row go here as one INSERT ...
        # SELECT in autocommit, which inserts only while the trial is RUNNING; anything else (a
        # row that exists, a finished trial) falls back to optuna's own code, which updates
        # the row or raises UpdateFinishedTrialError exactly as before.

        def _one_statement(self, statement: Any, params: dict[str, Any]) -> bool:
            """Run ``statement`` in autocommit; whether it touched exactly one row."""
            with self.engine.connect().execution_options(
                isolation_level="AUTOCOMMIT", preserve_rowcount=True
            ) as conn:
                return bool(conn.execute(statement, params).rowcount == 1)

        def _insert_if_running(self, table: Any, values: dict[str, Any], trial_id: int) -> bool:
            statement = _insert_statement(table, tuple(values))
            params = {f"v_{k}": v for k, v in values.items()} | {"running_trial_id": trial_id}
            try:
                return self._one_statement(statement, params)
            except sqlalchemy.exc.IntegrityError:
                return False  # the row exists: optuna's code updates it

        def set_trial_intermediate_value(
            self, trial_id: int, step: int, intermediate_value: float
        ) -> None:
            model = models.TrialIntermediateValueModel
            stored, value_type = model.intermediate_value_to_stored_repr(intermediate_value)
            values = {"trial_id": trial_id, "step": step, "intermediate_value": stored,
                      "intermediate_value_type": value_type}
            if not self._insert_if_running(model.__table__, values, trial_id):
                base.set_trial_intermediate_value(self, trial_id, step, intermediate_value)

        def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
            known = (trial_id, key) in self._hpo_user_attrs
            values = {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
            table = models.TrialUserAttributeModel.__table__
            if known or not self._insert_if_running(table, values, trial_id):
                base.set_trial_user_attr(self, trial_id, key, value)
            with self._hpo_lock:
                self._hpo_user_attrs.add((trial_id, key))

        def record_heartbeat(self, trial_id: int) -> None:
            # A trial's first beat inserts its row, the next ones update it: one statement each.
            statement = _beat_statements()[trial_id in self._hpo_beating]
            try:
                done = self._one_statement(statement, {"beat_trial_id": trial_id})
            except sqlalchemy.exc.IntegrityError:
                done = False
            if not done:
                base.record_heartbeat(self, trial_id)
            with self._hpo_lock:
                self._hpo_beating.add(trial_id)

        def create_trial_if(
            self,
            study_id: int,
            allow: Callable[[dict[str, int], int], bool],
            heartbeat: bool,
        ) -> tuple[optuna.trial.FrozenTrial | None, dict[str, int], int] | None:
            """Count the study's trials and, if ``allow(counts, n_retries)``, create a RUNNING
            trial (with its first heartbeat): one transaction, under the study's row lock.

            What optuna's ``create_new_trial`` and a lock around it take ~11 statements and four
            pooled connections for, in four statements on one: lock the study row, count by
            state (:func:`trial_counts`'s query), insert the trial numbered after them, insert
            its heartbeat. Creators serialize on the row lock (optuna's own included), so two
            workers never both take the last trial of a budget. PostgreSQL and MySQL only (the
            row lock): returns None elsewhere, and the caller takes its own lock.

            Returns ``(the new trial or None, counts by state name, n_retries)``, the counts as
            they were before the new trial. Pass the trial to
            :func:`hpo._optuna.add_to_storage_cache`.
            """
            if self.engine.dialect.name not in ("postgresql", "mysql", "mariadb"):
                return None
            lock, insert = _take_statements()
            start = datetime.datetime.now()
            with self.engine.begin() as conn:
                conn.execute(lock, {"study_id": study_id}).one()
                counts, n_retries = _count_trials(conn, study_id)
                if not allow(counts, n_retries):
                    return None, counts, n_retries
                number = sum(counts.values())
                trial_id = conn.execute(
                    insert, {"number": number, "study_id": study_id, "start": start}
                ).inserted_primary_key[0]
                if heartbeat:
                    conn.execute(_beat_statements()[0], {"beat_trial_id": trial_id})
            with self._hpo_lock:
                if heartbeat:
                    self._hpo_beating.add(trial_id)
            frozen = optuna.trial.FrozenTrial(
                number=number, state=TrialState.RUNNING, value=None, values=None,
                datetime_start=start, datetime_complete=None, params={}, distributions={},
                user_attrs={}, system_attrs={}, intermediate_values={}, trial_id=trial_id,
            )
            self.remember_trial(frozen)
            return frozen, counts, n_retries

        def remember_trial(self, frozen: Any) -> None:
            """Answer the next ``get_trial`` of this trial from ``frozen``, not the database.

            optuna reads a running trial back in full (six queries) right after creating it
            (``Trial()``) and at ``tell``, when this process holds it already. Whatever that
            read is for, the state change that follows checks the stored state itself.
            """
            with self._hpo_lock:
                self._hpo_fresh = (frozen._trial_id, frozen)

        def _create_new_trial(self, study_id: int, template_trial: Any = None) -> Any:
            frozen = base._create_new_trial(self, study_id, template_trial)
            if template_trial is None:
                self.remember_trial(frozen)
            return frozen

        def get_trial(self, trial_id: int) -> Any:
            with self._hpo_lock:
                fresh, self._hpo_fresh = self._hpo_fresh, None
            if fresh is not None and fresh[0] == trial_id:
                return copy.deepcopy(fresh[1])
            return base.get_trial(self, trial_id)

        def set_trial_state_values(
            self, trial_id: int, state: TrialState, values: Any = None
        ) -> bool:
            if state.is_finished():
                with self._hpo_lock:
                    self._hpo_beating.discard(trial_id)
                    self._hpo_user_attrs = {k for k in self._hpo_user_attrs if k[0] != trial_id}
                if self._finish_running(trial_id, state, values):
                    return True
            return bool(base.set_trial_state_values(self, trial_id, state, values))

        def _finish_running(self, trial_id: int, state: TrialState, values: Any) -> bool:
            # Finishing a RUNNING trial: one UPDATE that only matches while it is RUNNING, and
            # its values, in one transaction (optuna: read it FOR UPDATE, check, look up each
            # value row, write). Anything else (not RUNNING any more, a value row that exists)
            # rolls back and goes to optuna's code, which raises or updates as before.
            finish, insert_value = _finish_statements()
            rows = []
            for objective, value in enumerate(values or ()):
                stored, value_type = models.TrialValueModel.value_to_stored_repr(value)
                rows.append({"trial_id": trial_id, "objective": objective, "value": stored,
                             "value_type": value_type})
            try:
                with self.engine.connect().execution_options(preserve_rowcount=True) as conn:
                    with conn.begin() as transaction:
                        done = conn.execute(finish, {"finish_trial_id": trial_id, "new_state": state,
                                                     "complete": datetime.datetime.now()})
                        if done.rowcount != 1:
                            transaction.rollback()
                            return False
                        if rows:
                            conn.execute(insert_value, rows)
            except sqlalchemy.exc.IntegrityError:
                return False
            return True

        def _set_trial_param(
            self,
            trial_id: int,
            param_name: str,
            param_value_internal: float,
            distribution: Any,
            previous_distribution: Any,
        ) -> None:
            # optuna's storage cache passes the distribution this param had in earlier trials;
            # with it, the param is one INSERT ... SELECT while the trial is RUNNING (optuna:
            # find the trial, check it, insert, in a transaction). Without it (the study's first
            # use of the name), or when the insert does not apply, optuna's code runs.
            if previous_distribution is not None:
                optuna.distributions.check_distribution_compatibility(
                    previous_distribution, distribution)
                values = {"trial_id": trial_id, "param_name": param_name,
                          "param_value": param_value_internal,
                          "distribution_json": optuna.distributions.distribution_to_json(
                              distribution)}
                if self._insert_if_running(models.TrialParamModel.__table__, values, trial_id):
                    return
            base._set_trial_param(self, trial_id, param_name, param_value_internal, distribution,
                                  previous_distribution)

    def wrap(method: Callable[..., Any], check: bool = True) -> Callable[..., Any]:
        @functools.wraps(method)
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            if check:
                self.check_file()
            return retrying(
                lambda: method(self, *args, **kwargs),
                lambda: self._hpo_retry_seconds,
                on_retry=self.scoped_session.remove,  # never reuse a session on a dead connection
            )()

        return call

    own = dict(vars(_RetryingRDBStorage))  # our overrides are retried as well
    for name in (*_RETRIED_METHODS, "_get_stale_trial_ids", "create_trial_if"):
        # Heartbeats store no result (and run in their own thread, which can only log).
        method = wrap(own.get(name) or getattr(base, name), check=name != "record_heartbeat")
        setattr(_RetryingRDBStorage, name, method)
    _RetryingRDBStorage.__name__ = _RetryingRDBStorage.__qualname__ = "RDBStorage"
    return _RetryingRDBStorage


@functools.cache
def retrying_rdb_class() -> type:
    """The RDBStorage subclass that build_storage instantiates (made once per process)."""
    return _make_retrying_class()


def rdb_backend(storage: Any) -> optuna.storages.RDBStorage | None:
    """The RDBStorage behind a study's storage (optuna wraps it in a cache), or None."""
    import optuna

    from hpo._optuna import backend_of

    backend = backend_of(storage)
    return backend if isinstance(backend, optuna.storages.RDBStorage) else None


@functools.cache
def _counts_query() -> Any:
    import sqlalchemy

    from hpo._optuna import rdb_models

    models = rdb_models()
    trial = models.TrialModel
    attr = models.TrialSystemAttributeModel
    return (
        sqlalchemy.select(trial.state, sqlalchemy.func.count(), sqlalchemy.func.count(attr.trial_id))
        .outerjoin(attr, sqlalchemy.and_(attr.trial_id == trial.trial_id,
                                         attr.key == "retry_history"))
        .where(trial.study_id == sqlalchemy.bindparam("study_id"))
        .group_by(trial.state)
    )


def _count_trials(conn: Any, study_id: int) -> tuple[dict[str, int], int]:
    """Run the counts query on ``conn``: trials by state name, and the number of retries."""
    rows = conn.execute(_counts_query(), {"study_id": study_id}).all()
    return {state.name: n for state, n, _ in rows}, sum(r for _, _, r in rows)


def trial_counts(storage: Any, study_id: int) -> tuple[dict[str, int], int] | None:
    """Trials of a study by state, and how many are retries, in one query; None if not RDB.

    Returns ``({"COMPLETE": 10, "RUNNING": 2, ...}, n_retries)``, where ``n_retries`` counts
    the trials that retry a failed one (they carry a ``retry_history`` system attr): as many as
    failed trials that were retried. Loading every trial for this costs milliseconds per ask
    at thousands of trials; this query does not grow with them in round trips.
    """
    backend = rdb_backend(storage)
    if backend is None:
        return None

    def run() -> tuple[dict[str, int], int]:
        with backend.engine.connect() as conn:
            return _count_trials(conn, study_id)

    return retrying(run, lambda: getattr(backend, "_hpo_retry_seconds", 300.0))()
