"""Request checks that every kind of model and protocol shares: digit strings, version
numbers, JSON documents.

Types are the adapters' job (JSON schema, protobuf); what is specific to a kind (label
sets, latent shapes, seeds, image counts) is checked in that kind's module, image input in
`image_input.py`; these are the checks they have in common, written once. Each raises `ValidationError(field, problem)`.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from contract.layout import MAX_VERSION, ascii_number

from .errors import ValidationError

MAX_JSON_DEPTH = 64  # arrays and objects inside each other; numpy's arrays have at most 64 dimensions
_OPENING, _CLOSING = np.frombuffer(b"[{", np.uint8), np.frombuffer(b"]}", np.uint8)
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')  # a JSON string, escapes included (unrolled: no backtracking)


def decimal(text: str) -> int | None:
    """A string of ASCII digits (spaces around allowed) within int64 as an int, else None.
    `str.isdigit` alone also takes digits such as "²" that `int()` refuses, and `int()` raises
    for more than 4300 digits (a 500): no count a request gives needs more than 19."""
    return ascii_number(text.strip())


def shown(value: object, most: int = 40) -> str:
    """A value as an error message quotes it: its repr, cut short (a body can hold megabytes)."""
    text = repr(value)
    return text if len(text) <= most else text[:most] + "..."


def requested_version(value: object, field: str) -> int:
    """A model version as a request gives it (ASCII digits, or an integer) within int64, else
    ValidationError naming `field`. `int()` alone takes "١" (an Arabic-Indic one) and raises
    for thousands of digits: neither is a version."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        number = -1 if (read := ascii_number(value)) is None else read
    if not 0 <= number <= MAX_VERSION:
        raise ValidationError(field, f"{shown(value)} is not a version number: ASCII digits, 0 to {MAX_VERSION}")
    return number


def json_document(body: bytes | str, field: str = "body") -> Any:
    """A JSON text parsed, or ValidationError naming `field`: not JSON, not UTF-8, or arrays and
    objects nested more than MAX_JSON_DEPTH deep (Python's parser would raise RecursionError
    at about a thousand, a 500; nothing served takes more than a few levels). Every JSON body
    the service reads goes through here (pydantic's parser has its own limit, 200 levels)."""
    try:
        text = body.decode(json.detect_encoding(body), "surrogatepass") if isinstance(body, bytes) else body
    except UnicodeDecodeError as error:
        raise ValidationError(field, f"not JSON: {error}") from None
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and json_depth(text) > MAX_JSON_DEPTH:
        raise ValidationError(field, f"JSON nested more than {MAX_JSON_DEPTH} levels deep")
    try:
        return json.loads(text)
    except ValueError as error:
        raise ValidationError(field, f"not JSON: {error}") from None


def json_depth(text: str) -> int:
    """How deep arrays and objects nest in a JSON text (strings skipped), without parsing it."""
    codes = np.frombuffer(_JSON_STRING.sub("", text).encode("utf-8", "surrogatepass"), np.uint8)
    steps = np.isin(codes, _OPENING).astype(np.int8) - np.isin(codes, _CLOSING).astype(np.int8)
    return int(np.cumsum(steps, dtype=np.int64).max(initial=0))
