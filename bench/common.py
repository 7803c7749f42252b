"""Shared set-up for the benchmarks: a PostgreSQL database of their own on 127.0.0.1.

A benchmark drops and re-creates its database. Engineers who share one
PostgreSQL server each export their own ``DATABASE_URL``; a benchmark then
uses ``<that database>_bench_<name>`` on that server, so two engineers never
drop each other's benchmark database, and the ``DATABASE_URL`` database itself
is never dropped. Without a PostgreSQL ``DATABASE_URL`` it is
``larry_bench_<name>`` on 127.0.0.1:5432 (user postgres, trust auth).
"""

import os
import re
import statistics
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_SERVER = "postgres://postgres@127.0.0.1:5432/larry"


def _server_url() -> str:
    url = os.environ.get("DATABASE_URL", "")
    return url if url.startswith(("postgres://", "postgresql://")) else DEFAULT_SERVER


def database_name(bench: str) -> str:
    """The database of benchmark ``bench`` (``judge``, ``queue``): ``<DATABASE_URL's database>_bench_<bench>``."""
    base = urlsplit(_server_url()).path.lstrip("/") or "larry"
    # A benchmark's child processes inherit DATABASE_URL already pointing at the benchmark's database.
    name = base if base.endswith(f"_bench_{bench}") else f"{base}_bench_{bench}"
    if not re.fullmatch(r"[A-Za-z0-9_]{1,63}", name):
        raise ValueError(f"cannot name a benchmark database {name!r}; set DATABASE_URL to a plain database name")
    return name


def database_url(name: str) -> str:
    """``DATABASE_URL`` (or the default server) with the database ``name``."""
    parts = urlsplit(_server_url())
    return urlunsplit(parts._replace(path=f"/{name}", query=""))


def recreate_database(name: str) -> None:
    """Drop (disconnecting its users) and create the database ``name``, which must be a benchmark's."""
    import psycopg

    if "_bench_" not in name:
        raise ValueError(f"refusing to drop {name!r}: not a benchmark database")
    parts = urlsplit(database_url("postgres"))
    with psycopg.connect(urlunsplit(parts._replace(scheme="postgresql")), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def percentile(values: list[float], q: int) -> float:
    """The ``q``-th percentile (1 to 99) of ``values``, inclusive method; the value itself for one value."""
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]
