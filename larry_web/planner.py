"""Planner statistics after bulk writes (PostgreSQL).

Right after an import PostgreSQL's planner knows nothing of the new rows until autovacuum gets round to
``ANALYZE`` (a minute or more later): a table it believes empty or small gets nested loops and sequential
scans, and the first export and project pages after a 50,000-item import ran about 5x slower (one page
query: 85 ms before ``ANALYZE``, 3.7 ms after; issue 16). So the code that writes many rows at once
analyses the tables itself, the way autovacuum would, only at once.
"""

from django.db import connection

# Autovacuum's own rule (autovacuum_analyze_threshold 50 + autovacuum_analyze_scale_factor 0.1), with a larger
# floor: a small import is planned well enough, and ANALYZE samples up to 30,000 rows (10-200 ms) whatever the
# table's size.
MIN_ROWS = 1000
SHARE = 0.1


def analyze_after_bulk_write(written: dict[str, int], columns: dict[str, tuple[str, ...]] | None = None) -> list[str]:
    """``ANALYZE`` each table of ``written`` (``{database table name: rows just written to it}``) whose rows
    are at least ``MIN_ROWS`` and at least ``SHARE`` of the table's size as last estimated (any number for a
    table never analysed); PostgreSQL only (elsewhere nothing is done). Returns the tables analysed.

    ``columns`` (``{table: column names}``) limits a table's ``ANALYZE`` to the columns queries join, filter
    and sort on: the row count and those columns' statistics are what the first queries need, and sampling
    long text columns is most of the cost (items: 187 ms against 346 ms at 50,000 rows). Such a partial
    ``ANALYZE`` leaves autovacuum's counter alone, so autovacuum still analyses the whole table later.

    Runs on the default connection, inside the caller's transaction if there is one (PostgreSQL allows
    ``ANALYZE`` there); the table names come from the models, never from input.
    """
    big = {table: rows for table, rows in written.items() if rows >= MIN_ROWS}
    if connection.vendor != "postgresql" or not big:
        return []
    analysed = []
    with connection.cursor() as cursor:
        cursor.execute("SELECT relname, reltuples FROM pg_class WHERE relname = ANY(%s) AND relkind = 'r'", [list(big)])
        sizes = dict(cursor.fetchall())
        for table, rows in big.items():
            known = sizes.get(table)
            # reltuples is -1 for a table never analysed or vacuumed, 0 for one seen empty.
            if known is not None and (known <= 0 or rows >= SHARE * known):
                quote = connection.ops.quote_name
                only = (columns or {}).get(table)
                listed = f" ({', '.join(quote(name) for name in only)})" if only else ""
                cursor.execute(f"ANALYZE {quote(table)}{listed}")
                analysed.append(table)
    return analysed
