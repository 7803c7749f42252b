"""Database helpers shared by the apps."""

from django.db import connections


def commit_without_waiting(using: str = "default") -> None:
    """Let the current transaction's COMMIT return before its WAL record is flushed to disk (PostgreSQL).

    For writes that are cheap to lose in a crash and are on every SME request: the lease of the next item,
    the session's undo stack. ``SET LOCAL synchronous_commit TO OFF`` holds for this transaction only; a crash
    within about three times ``wal_writer_delay`` (200 ms by default) of the commit may lose it, never
    corrupts anything, and never reorders it after a later durable commit (PostgreSQL documentation,
    "Asynchronous Commit", https://www.postgresql.org/docs/current/wal-async-commit.html). An SME's decision
    is never written this way. Call it inside ``transaction.atomic()``; elsewhere (SQLite) it does nothing.
    """
    connection = connections[using]
    if connection.vendor == "postgresql" and connection.in_atomic_block:
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit TO OFF")
