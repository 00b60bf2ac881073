"""Reading a dataset file into JSON values with their line numbers (pure).

Whatever the bytes, reading never raises: a file that is not UTF-8 and every record
that is not JSON become errors located at `line` (1-based, counted in "\\n" as
editors count them). JSON Lines records are separated by "\\n" only ("\\r\\n" works):
U+2028 and other characters Python's `splitlines` treats as line breaks are legal
inside JSON strings.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from typing import Any

# longest first: the UTF-32 LE mark begins with the UTF-16 LE one
_FOREIGN_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                 (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"))

Record = tuple[int, int, Any, "str | None"]  # (line, record number, value, error)


def decode(blob: bytes) -> tuple[str, None] | tuple[None, tuple[int, str]]:
    """(text, None), or (None, (line, reason)) when the bytes are not UTF-8."""
    for bom, name in _FOREIGN_BOMS:
        if blob.startswith(bom):
            return None, (1, f"the file is {name} (byte-order mark {bom.hex(' ')}); datasets must be UTF-8")
    try:
        return blob.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        line = 1 + blob.count(b"\n", 0, exc.start)
        column = exc.start - (blob.rfind(b"\n", 0, exc.start) + 1) + 1
        return None, (line, f"not valid UTF-8 (byte offset {exc.start}, column {column}, byte "
                            f"{blob[exc.start:exc.start + 1].hex()}): save the file as UTF-8 "
                            "(it may be Latin-1, Windows-1252 or GBK)")


def _json_error(exc: Exception, text: str) -> str:
    if isinstance(exc, RecursionError):
        return "invalid JSON: nested too deeply"
    if isinstance(exc, json.JSONDecodeError):
        reason = f"invalid JSON: {exc.msg} at column {exc.colno}"
    else:  # e.g. an integer longer than Python converts (4300 digits)
        reason = f"invalid JSON: {exc}"
    if "\x00" in text:
        reason += " (the text has NUL bytes: UTF-16 without a byte-order mark?)"
    return reason


def iter_records(text: str) -> Iterator[Record]:
    """(line, record number, value, error) for a JSON Lines file or a JSON array.
    `error` is set (and value None) for a record that is not valid JSON."""
    if text.startswith("\ufeff"):
        text = text[1:]
    if text.lstrip().startswith("["):
        yield from _iter_json_array(text)
        return
    number = 0
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        number += 1
        try:
            yield lineno, number, json.loads(line), None
        except (ValueError, RecursionError) as exc:
            yield lineno, number, None, _json_error(exc, line)


def _iter_json_array(text: str) -> Iterator[Record]:
    decoder = json.JSONDecoder()
    n = len(text)

    def skip_ws(i: int) -> int:
        while i < n and text[i] in " \t\r\n":
            i += 1
        return i

    def line_at(i: int) -> int:
        return 1 + text.count("\n", 0, i)

    pos = skip_ws(text.index("[") + 1)
    line, counted_to, number, after_comma = line_at(pos), pos, 0, False
    while pos < n and (text[pos] != "]" or after_comma):  # "[1, ]" is not JSON
        line += text.count("\n", counted_to, pos)
        counted_to = pos
        number += 1
        try:
            value, end = decoder.raw_decode(text, pos)
        except (ValueError, RecursionError) as exc:
            err_line = exc.lineno if isinstance(exc, json.JSONDecodeError) else line
            yield err_line, number, None, _json_error(exc, text[pos:pos + 1000])
            return
        yield line, number, value, None
        pos = skip_ws(end)
        after_comma = pos < n and text[pos] == ","
        if after_comma:
            pos = skip_ws(pos + 1)
        elif pos < n and text[pos] != "]":
            yield line_at(pos), number + 1, None, "invalid JSON: expected ',' or ']' in the array"
            return
    if pos >= n:
        yield line_at(n), number + 1, None, "invalid JSON: unterminated array"
        return
    rest = skip_ws(pos + 1)
    if rest < n:  # e.g. JSON Lines after an array: never drop records silently
        yield line_at(rest), number + 1, None, "invalid JSON: text after the end of the array"
