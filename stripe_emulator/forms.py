"""Stripe v1 form encoding: ``a[b][0][c]=v`` pairs <-> nested dicts and lists."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

_KEY_RE = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_PART_RE = re.compile(r"\[([^\[\]]*)\]")


class FormError(ValueError):
    """A malformed bracket key."""


def _split_key(key: str) -> list[str]:
    m = _KEY_RE.match(key)
    if not m:
        raise FormError(f"Invalid parameter name: {key}")
    parts = [m.group(1)]
    parts.extend(_PART_RE.findall(m.group(2)))
    return parts


def _listify(node: Any) -> Any:
    """Turn dicts whose keys are all array indexes (or ``[]`` appends) into lists."""
    if isinstance(node, dict):
        for k, v in list(node.items()):
            node[k] = _listify(v)
        if node and all(isinstance(k, str) and k.isdigit() for k in node):
            return [node[k] for k in sorted(node, key=int)]
        return node
    return node


def parse_pairs(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Build nested params from decoded (key, value) pairs.

    ``types[0]=a&types[1]=b`` -> ``{"types": ["a", "b"]}``; ``expand[]=x`` appends;
    ``payload[value]=3`` -> ``{"payload": {"value": "3"}}``. Values stay strings.
    """
    root: dict[str, Any] = {}
    append_counter: dict[int, int] = {}
    for key, value in pairs:
        parts = _split_key(key)
        node: dict[str, Any] = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if part == "":
                # "[]" append syntax: use a synthetic increasing index
                n = append_counter.get(id(node), len(node))
                append_counter[id(node)] = n + 1
                part = str(n)
            if last:
                node[part] = value
            else:
                child = node.get(part)
                if not isinstance(child, dict):
                    child = {}
                    node[part] = child
                node = child
    return _listify(root)


def parse_qs(raw: str | bytes) -> dict[str, Any]:
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    if not raw:
        return {}
    return parse_pairs(parse_qsl(raw, keep_blank_values=True))


def encode(params: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """The inverse of :func:`parse_pairs` (used by tests and the admin helper)."""
    out: list[tuple[str, str]] = []
    for k, v in params.items():
        key = f"{prefix}[{k}]" if prefix else str(k)
        if v is None:
            continue
        if isinstance(v, dict):
            out.extend(encode(v, key))
        elif isinstance(v, (list, tuple)):
            out.extend(encode({str(i): x for i, x in enumerate(v)}, key))
        elif isinstance(v, bool):
            out.append((key, "true" if v else "false"))
        else:
            out.append((key, str(v)))
    return out
