"""Shared set-up for the benchmarks: a PostgreSQL database of their own on 127.0.0.1.

A benchmark drops and re-creates its database. Engineers who share one
PostgreSQL server each export their own ``DATABASE_URL``; a benchmark then
uses ``<that database>_bench_<name>`` on that server, so two engineers never
drop each other's benchmark database, and the ``DATABASE_URL`` database itself
is never dropped. Without a PostgreSQL ``DATABASE_URL`` it is
``larry_bench_<name>`` on 127.0.0.1:5432 (user postgres, trust auth).
"""

import json
import os
import random
import re
import statistics
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_SERVER = "postgres://postgres@127.0.0.1:5432/larry"
# The shared data folder beside the checkout, or LARRY_SHARED_DIR (as the tests read it).
SHARED = Path(os.environ.get("LARRY_SHARED_DIR") or ROOT.parent / "shared") / "data"


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


def write_items(path: Path, n: int, seed: int = 0) -> str:
    """``n`` JSONL items sampled from the shared data (or synthetic); returns where they came from."""
    rng = random.Random(seed)
    sources = sorted(SHARED.glob("*.jsonl")) if SHARED.is_dir() else []
    rows = [json.loads(line) for source in sources for line in source.open(encoding="utf-8") if line.strip()]
    origin = f"{len(rows)} rows of {SHARED}" if rows else "synthetic"
    with path.open("w", encoding="utf-8") as out:
        for i in range(n):
            if rows:
                row = dict(rng.choice(rows))
            else:
                words = lambda k: " ".join(rng.choice(["the", "price", "plan", "refund", "is", "é"]) for _ in range(k))  # noqa: E731
                row = {
                    "prompt": words(rng.randint(5, 40)),
                    "context": words(rng.randint(0, 200)) if rng.random() < 0.3 else "",
                    "response": words(rng.randint(10, 150)),
                    "human_label": rng.choice(["accept", "reject"]),
                    "source_model": "synthetic",
                }
            row["id"] = f"bench-{i}"
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    return origin
