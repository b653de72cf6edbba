"""JSON lines of the volume listing and index: orjson's speed, the json module's reach.

An incremental backup writes and reads a line per entry of the volume, twice over, and
the json module's calls were a fifth of that step.  orjson refuses what surrogateescape
makes of an undecodable file name (a lone surrogate); such a line goes through the json
module instead.  Either way a line is plain JSON, read back by either.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_UTF8 = json.JSONEncoder(ensure_ascii=False).encode


def dumps(obj: Any) -> bytes:
    """One line's JSON, without its newline; a name orjson refuses keeps its original
    bytes (UTF-8 with surrogateescape, as the file system gave them)."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        return _UTF8(obj).encode("utf-8", "surrogateescape")


def loads(line: bytes) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return json.loads(line.decode("utf-8", "surrogateescape"))
