"""Edit a model's `config.toml` in place, keeping its comments and layout.

Only simple `[table]` sections are edited (`[versions.3]`, `[version_policy]`, `[runtime]`, ...): a
key line is replaced or added, a missing table is appended. The result is re-read with `tomllib`
and validated with `parse_config` before it replaces the file (atomically); a config written in a
form this cannot edit (inline tables, dotted keys, multi-line arrays) fails with a
`ModelConfigError` that says which key to set by hand, and the file stays as it was.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fleetinfer.errors import ModelConfigError
from fleetinfer.server.repository import parse_config

TomlValue = str | int | float | bool | list[Any]


def render_value(value: TomlValue) -> str:
    """One TOML value: strings as basic strings, lists of scalars inline."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    return "[" + ", ".join(render_value(v) for v in value) + "]"


def _header(table: str) -> re.Pattern[str]:
    return re.compile(r"^\s*\[\s*" + re.escape(table) + r"\s*\]\s*(#.*)?$")


def _render_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def set_table_values(text: str, table: str, values: Mapping[str, TomlValue]) -> str:
    """`text` with `values` set in `[table]` (the table is appended when missing)."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if _header(table).match(line)), None)
    if start is None:
        body = [f"{_render_key(k)} = {render_value(v)}" for k, v in values.items()]
        return "\n".join([*lines, "", f"[{table}]", *body]) + "\n"
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines)
    )
    for key, value in values.items():
        line = f"{_render_key(key)} = {render_value(value)}"
        pattern = re.compile(r"^\s*" + re.escape(_render_key(key)) + r"\s*=")
        found = next((i for i in range(start + 1, end) if pattern.match(lines[i])), None)
        if found is not None:
            lines[found] = line
            continue
        last = max([start, *(i for i in range(start + 1, end) if lines[i].strip())])
        lines.insert(last + 1, line)
        end += 1
    return "\n".join(lines) + "\n"


def _lookup(table: Mapping[str, Any], dotted: str) -> Any:
    node: Any = table
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def update_config(path: Path, updates: Mapping[str, Mapping[str, TomlValue]]) -> None:
    """Set `updates[table][key] = value` in the config at `path`, verified, written atomically."""
    original = path.read_text(encoding="utf-8")
    text = original
    for table, values in updates.items():
        text = set_table_values(text, table, values)
    try:
        parsed = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ModelConfigError(
            f"{path}: could not add {dict(updates)} without breaking the file ({exc}); "
            "the config defines these tables in a form this cannot edit: set them by hand"
        ) from exc
    for table, values in updates.items():
        for key, value in values.items():
            if _lookup(parsed, table).get(key) != value:
                raise ModelConfigError(
                    f"{path}: could not set `{table}.{key}` (multi-line or dotted form?): "
                    f"set it to {render_value(value)} by hand"
                )
    _write_validated(path, text, parsed.get("name"))


def _write_validated(path: Path, text: str, name: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    try:
        parse_config(tmp, expected_name=name if isinstance(name, str) else None)
        os.replace(tmp, path)
    except ModelConfigError as exc:
        raise ModelConfigError(
            f"{path}: the edited config would be invalid, left unchanged: {exc}"
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)
