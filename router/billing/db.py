"""Open the billing database from a URL or a file path and bring its schema to the newest
migration.

SQLite is the default (a file path, or ``sqlite:///path``); PostgreSQL is a
``postgresql+psycopg://user@host:port/db`` URL (``postgresql://`` and ``postgres://`` mean
the same; psycopg 3 is the driver). The schema is managed only by Alembic; opening a
database runs any migration it lacks, under a lock, so two processes may open it at once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from operator import itemgetter
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from router.core.errors import BillingError

_MIGRATIONS = Path(__file__).with_name("migrations")
#: An arbitrary constant: the PostgreSQL advisory lock that serialises migrations.
_MIGRATION_LOCK = 0x52524249


def database_url(target: str | Path) -> sa.URL:
    """The SQLAlchemy URL for a billing database given as a URL or a file path."""
    text = str(target)
    if "://" not in text:
        path = Path(text).expanduser()
        if not path.parent.is_dir():
            raise BillingError(f"billing database {text!r}: no such directory {str(path.parent)!r}")
        return sa.make_url(f"sqlite:///{path.resolve()}")
    try:
        url = sa.make_url(text)
    except sa.exc.ArgumentError as exc:
        raise BillingError(f"billing database: not a database URL ({exc})") from None
    if url.drivername in ("postgres", "postgresql"):
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise BillingError(
            f"billing database: unsupported URL scheme {url.drivername!r} "
            "(use a file path, sqlite:///path or postgresql+psycopg://…)"
        )
    return url


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # WAL: readers never block the consumer's writer; NORMAL sync is durable across a
    # process crash (SIGKILL), which is what exactly-once needs here.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
    # Let SQLAlchemy, not the sqlite3 module, begin transactions (sqlite3 would leave DDL
    # outside them, so a migration could half-apply).
    dbapi_conn.isolation_level = None


def _sqlite_begin(conn) -> None:
    # A writer takes the write lock at BEGIN: two deferred writers that both read first
    # would otherwise fail to upgrade their locks instead of waiting for each other.
    immediate = conn.get_execution_options().get("billing_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


@contextmanager
def writing(engine: Engine) -> Iterator[sa.Connection]:
    """A connection inside one write transaction (committed on success, rolled back on
    any error); on SQLite it holds the write lock from the start."""
    with engine.connect().execution_options(billing_write=True) as conn, conn.begin():
        yield conn


def open_billing(target: str | Path, *, migrate: bool = True) -> Engine:
    """An engine on the billing database at ``target`` (URL or path), migrated to the
    newest schema unless ``migrate`` is false. Raises :class:`BillingError` (the password,
    if any, never shown) when it cannot be reached or migrated."""
    url = database_url(target)
    shown = url.render_as_string(hide_password=True)
    if url.get_backend_name() == "sqlite":
        engine = sa.create_engine(url, connect_args={"timeout": 60})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        sa.event.listen(engine, "begin", _sqlite_begin)
    else:
        # No server-side prepared statements: psycopg prepares a query after five runs,
        # and a plan made while the tables were empty (a sequential scan) would then be
        # kept for the dedupe lookups at any size.
        engine = sa.create_engine(url, pool_pre_ping=True, connect_args={"prepare_threshold": None})
    try:
        if migrate:
            _migrate(engine)
        else:
            with engine.connect():
                pass
    except sa.exc.SQLAlchemyError as exc:
        engine.dispose()
        raise BillingError(f"billing database {shown}: {_first_line(exc)}") from exc
    return engine


def schema_revision(engine: Engine) -> str | None:
    """The migration the database is at (None for an empty database)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str:
    """The newest migration shipped with this version."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    return cfg


def _migrate(engine: Engine) -> None:
    head = head_revision()
    for attempt in range(5):
        if schema_revision(engine) == head:
            return
        try:
            with writing(engine) as conn:  # one process migrates; the others wait, then see head
                if conn.dialect.name == "postgresql":
                    conn.execute(
                        sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK}
                    )
                if MigrationContext.configure(conn).get_current_revision() == head:
                    return
                cfg = _config()
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
            return
        except sa.exc.OperationalError:
            # SQLite busy beyond the timeout: look again.
            if attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))


#: From how many rows a PostgreSQL insert goes by ``COPY``.
_COPY_FROM = 32


def bulk_insert(
    conn: sa.Connection, table: sa.Table, rows: Sequence, cols: Sequence[str] | None = None
) -> None:
    """Insert ``rows`` inside the caller's transaction: dicts with the same keys, or, with
    ``cols``, tuples in that column order (no dict built or taken apart per row on the hot
    path). ``COPY`` on PostgreSQL (an order of magnitude faster than row inserts),
    ``executemany`` on SQLite. Constraints hold either way: a duplicate key fails the
    transaction."""
    if not rows:
        return
    if cols is None:
        cols = list(rows[0])
        get = itemgetter(*cols)
        rows = list(map(get, rows)) if len(cols) > 1 else [(r[cols[0]],) for r in rows]
    if conn.dialect.name != "postgresql":
        # The driver's own executemany with tuples: SQLAlchemy's per-row parameter
        # processing would cost more than SQLite's insert itself.
        marks = ", ".join("?" * len(cols))
        conn.exec_driver_sql(
            f"INSERT INTO {table.name} ({', '.join(cols)}) VALUES ({marks})", list(rows)
        )
        return
    if len(rows) < _COPY_FROM:
        # A COPY costs two round trips (the command, then the data): a plain INSERT is
        # cheaper for the few rows one postback writes. Constraints hold the same.
        conn.execute(table.insert(), [dict(zip(cols, r)) for r in rows])
        return
    import psycopg

    sql = f"COPY {table.name} ({', '.join(cols)}) FROM STDIN"
    raw = conn.connection.dbapi_connection
    assert isinstance(raw, psycopg.Connection)
    try:
        with raw.cursor() as cur, cur.copy(sql) as cp:
            for r in rows:
                cp.write_row(r)
    except psycopg.Error as exc:  # the same exceptions SQLAlchemy raises for execute()
        kind = (
            sa.exc.IntegrityError
            if isinstance(exc, psycopg.IntegrityError)
            else sa.exc.OperationalError
            if isinstance(exc, psycopg.OperationalError)
            else sa.exc.DBAPIError
        )
        raise kind(sql, None, exc) from exc


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__
