"""CSV cells that are safe to open in a spreadsheet."""

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def neutralise_formula(value: str) -> str:
    """Prefix a cell that a spreadsheet would evaluate (``= + - @``, tab, CR first) with ``'``.

    Source: OWASP, "CSV Injection". The prefix shows in the cell, so the text
    stays readable and is never run. Used by every CSV that Larry writes.
    """
    return "'" + value if value.startswith(FORMULA_PREFIXES) else value
