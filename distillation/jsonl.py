"""JSON lines that every reader splits where Larry ends them, at ``\\n``, and nowhere else.

JSON (RFC 8259, section 7) must escape only ``"``, ``\\`` and U+0000-U+001F in
a string; ``json.dumps(..., ensure_ascii=False)`` and orjson write every other
character raw. Among them are U+0085 (NEXT LINE), U+2028 (LINE SEPARATOR) and
U+2029 (PARAGRAPH SEPARATOR), where readers that split text on Unicode line
boundaries end a line: Python's ``str.splitlines()``, and JavaScript, whose
regular expressions (``^``, ``$``, ``.``) take U+2028 and U+2029 as line
terminators. One record then reads as two or three, neither valid JSON. So
every JSON line Larry writes goes through ``escape_unicode_line_breaks``, which
writes those three, and the rest of the C1 controls (U+0080-U+009F: invisible,
never meant in text, and acted on by some terminals and tools), as JSON
escapes (``\\u0085``, ``\\u2028``, lowercase hex as ``json.dumps`` writes them
with ``ensure_ascii=True``): the same JSON value, in bytes no reader splits. The
other characters ``str.splitlines()`` breaks at (U+000A-U+000D, U+001C-U+001E)
are below U+0020, so JSON escapes them already.

Outside a JSON string a JSON text holds only ASCII, and inside one a raw
character is never part of an escape, so replacing each such character by its
escape is exact, on ``str`` or on UTF-8 ``bytes``.
"""

import json
import re
from typing import AnyStr

ESCAPED = "".join(map(chr, range(0x80, 0xA0))) + "\u2028\u2029"
_TEXT = re.compile(f"[{re.escape(ESCAPED)}]")
_TEXT_ESCAPES = {c: f"\\u{ord(c):04x}" for c in ESCAPED}
# In UTF-8, U+0080-U+009F are C2 80 to C2 9F, and U+2028 and U+2029 are E2 80 A8 and E2 80 A9. The lead bytes
# C2 and E2 never occur inside another character, so these byte patterns find exactly those characters.
_UTF8 = re.compile(rb"\xc2[\x80-\x9f]|\xe2\x80[\xa8\xa9]")
# The separators alone: a pattern with a literal prefix, which the regex engine finds several times faster
# than the alternation above, or than two substring searches.
_UTF8_SEPARATORS = re.compile(rb"\xe2\x80[\xa8\xa9]")
_UTF8_ESCAPES = {c.encode(): escape.encode() for c, escape in _TEXT_ESCAPES.items()}


def escape_unicode_line_breaks(line: AnyStr) -> AnyStr:
    """``line`` (JSON text, ``str`` or UTF-8 ``bytes``) with U+0080-U+009F, U+2028 and U+2029 written as
    ``\\uXXXX`` escapes; the same object when it holds none of them.

    Cheap when there is nothing to do: an ASCII ``str`` is known in constant time, ASCII ``bytes`` in
    one fast pass, and other ``bytes`` take a byte search and a prefix search before any substitution
    (docs/PERFORMANCE.md, "Data in and out").
    """
    if line.isascii():
        return line
    if isinstance(line, bytes):
        if b"\xc2" in line or _UTF8_SEPARATORS.search(line):
            return _UTF8.sub(lambda match: _UTF8_ESCAPES[match.group()], line)
        return line
    return _TEXT.sub(lambda match: _TEXT_ESCAPES[match.group()], line)


def json_line(record) -> str:
    """One JSON line (no line terminator) of ``record``: ``json.dumps(record, ensure_ascii=False)`` with
    ``escape_unicode_line_breaks`` applied. Raises TypeError for what JSON cannot hold."""
    return escape_unicode_line_breaks(json.dumps(record, ensure_ascii=False))
