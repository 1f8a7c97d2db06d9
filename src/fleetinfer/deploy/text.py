"""The two text formats the renderers write without a third-party writer: block YAML for the
Kubernetes objects (strings double-quoted as JSON, which YAML reads the same), and a TOML table
of scalars for the ConfigMap's `fleetinfer.toml`."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-/]*$")
PLAIN_VALUE = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-/]*$")
YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "y", "n", "null", "nan", "inf"}


def to_yaml(value: Any) -> str:
    """One YAML document, block style; `yaml.safe_load` gives `value` back."""
    return "\n".join(_yaml_lines(value, 0)) + "\n"


def _yaml_lines(value: Any, indent: int) -> list[str]:
    pad = " " * indent
    if isinstance(value, Mapping) and value:
        lines = []
        for key, item in value.items():
            head = f"{pad}{_yaml_key(str(key))}:"
            lines += _yaml_entry(head, item, indent)
        return lines
    if isinstance(value, list) and value:
        lines = []
        for item in value:
            nested = _yaml_lines(item, indent + 2)
            lines.append(f"{pad}- {nested[0].lstrip()}")
            lines += nested[1:]
        return lines
    return [pad + _yaml_scalar(value)]


def _yaml_entry(head: str, item: Any, indent: int) -> list[str]:
    if isinstance(item, Mapping) and item:
        return [head, *_yaml_lines(item, indent + 2)]
    if isinstance(item, list) and item:
        return [head, *_yaml_lines(item, indent)]
    if isinstance(item, str) and _is_block(item):
        pad = " " * (indent + 2)
        return [f"{head} |", *(pad + line for line in item.splitlines())]
    return [f"{head} {_yaml_scalar(item)}"]


def _is_block(text: str) -> bool:
    """Lines YAML's `|` keeps as they are: one final newline, no blank or indented first line."""
    body = text[:-1]
    return (text.endswith("\n") and "\n" in body and not body.endswith("\n")
            and not text[0].isspace() and all(c == "\n" or c.isprintable() for c in text)
            and not any(line != line.rstrip() for line in body.split("\n")))  # fmt: skip


def _yaml_key(key: str) -> str:
    return key if PLAIN_KEY.match(key) else json.dumps(key)


def _yaml_scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, Mapping):
        return "{}"
    if isinstance(value, list):
        return "[]"
    text = str(value)
    if PLAIN_VALUE.match(text) and text.lower() not in YAML_WORDS:
        return text
    return json.dumps(text)


def toml_table(name: str, table: Mapping[str, Any]) -> str:
    """`[name]` and its scalar keys, in TOML."""
    lines = [f"[{name}]"]
    for key, value in table.items():
        lines.append(f"{key} = {_toml_scalar(value)}")
    return "\n".join(lines) + "\n"


def _toml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))
