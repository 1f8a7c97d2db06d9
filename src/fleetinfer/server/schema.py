"""One schema for a model's `config.toml` and a version's `manifest.json`, checked before use.

Every key is known: an unknown key (a typo) is named with its key path and the closest valid key.
Every mistake is reported, not only the first, each as `field `<path>` must be <what>, got <what
came>`, so a config with several mistakes is fixed in one go. The checks run on the parsed TOML /
JSON tables before any value is used, so a value that passes here cannot fail a request later
(`preferred_batch_sizes = [0]` is refused at load, not on every inference).

msgspec decodes the wire messages; it stops at the first mistake, so the files people edit by
hand go through this small walker instead.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

DTYPE_NAMES = ("bool", "float16", "float32", "float64", "int32", "int64", "int8", "uint8")
OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
VERSION_POLICIES = ("latest", "specific", "all")
SHA256 = re.compile(r"[0-9a-fA-F]{64}")
VERSION_NUMBER = re.compile(r"[0-9]{1,18}")  # ASCII digits: `str.isdigit` admits "²"

Check = Callable[[Any], bool]


@dataclass(frozen=True, slots=True)
class Value:
    """A leaf: what it must be (in words) and the test it must pass."""

    expected: str
    check: Check
    required: bool = False


@dataclass(frozen=True, slots=True)
class ListOf:
    """A list whose every item must pass `check`; a bad item is named by its index."""

    expected: str  # of one item
    check: Check
    non_empty: bool = False
    required: bool = False


@dataclass(frozen=True, slots=True)
class Table:
    """A table of known keys; `entries` (key test, schema) admits keys by pattern instead."""

    keys: Mapping[str, Value | ListOf | Table | TableArray] = field(default_factory=dict)
    required: bool = False
    entries: tuple[str, Check, Table] | None = None  # (what the key must be, its test, schema)


@dataclass(frozen=True, slots=True)
class TableArray:
    """`[[name]]`: a non-empty array of tables of one schema."""

    table: Table
    required: bool = False


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_at_least(low: int) -> Check:
    return lambda v: _int(v) and v >= low


def _one_of(choices: tuple[str, ...]) -> Check:
    return lambda v: isinstance(v, str) and v in choices


def _string(value: Any) -> bool:
    return isinstance(value, str)


def _sha256(value: Any) -> bool:
    return isinstance(value, str) and SHA256.fullmatch(value) is not None


def _dimension(value: Any) -> bool:
    return _int(value) and (value == -1 or value > 0)


TENSOR = Table(
    {
        "name": Value("a string", _string, required=True),
        "dtype": Value(f"one of {list(DTYPE_NAMES)}", _one_of(DTYPE_NAMES), required=True),
        "shape": ListOf(
            "a positive integer or -1 (dynamic)", _dimension, non_empty=True, required=True
        ),
    }
)
MODEL_CONFIG = Table(
    {
        "name": Value("a string", _string, required=True),
        "max_batch_size": Value("an integer >= 1", _int_at_least(1), required=True),
        "inputs": TableArray(TENSOR, required=True),
        "outputs": TableArray(TENSOR, required=True),
        "batching": Table(
            {
                "max_queue_delay_us": Value("an integer >= 0", _int_at_least(0)),
                "preferred_batch_sizes": ListOf("an integer >= 1", _int_at_least(1)),
            }
        ),
        "instances": Table({"count": Value("an integer >= 1", _int_at_least(1))}),
        "runtime": Table(
            {
                "execution_providers": ListOf("a provider name", _string),
                "intra_op_threads": Value(
                    "an integer >= 0 (0 = runtime default)", _int_at_least(0)
                ),
                "inter_op_threads": Value("an integer >= 0", _int_at_least(0)),
                "graph_optimization_level": Value(
                    f"one of {list(OPTIMIZATION_LEVELS)}", _one_of(OPTIMIZATION_LEVELS)
                ),
                "memory_arena": Value("true or false", lambda v: isinstance(v, bool)),
            }
        ),
        "version_policy": Table(
            {
                "policy": Value(f"one of {list(VERSION_POLICIES)}", _one_of(VERSION_POLICIES)),
                "versions": ListOf("a version number (an integer >= 0)", _int_at_least(0)),
            }
        ),
        "versions": Table(
            entries=(
                "a [versions.<number>] table",
                lambda key: is_version_number(key),
                Table({"sha256": Value("a hex sha256 (64 digits)", _sha256, required=True)}),
            )
        ),
    },
    required=True,
)


def is_version_number(name: str) -> bool:
    """A version folder's or table's name: ASCII digits only."""
    return VERSION_NUMBER.fullmatch(name) is not None


def config_problems(table: Mapping[str, Any]) -> list[str]:
    """Every mistake in a parsed `config.toml`, each naming its key path; [] when valid."""
    found = table_problems(table, MODEL_CONFIG, "")
    found += _cross_field_problems(table)
    return found


def _cross_field_problems(table: Mapping[str, Any]) -> list[str]:
    """Rules between keys, checked when the keys themselves are valid."""
    found = []
    max_batch = table.get("max_batch_size")
    batching = table.get("batching")
    preferred = batching.get("preferred_batch_sizes") if isinstance(batching, dict) else None
    if _int(max_batch) and isinstance(preferred, list):
        for i, size in enumerate(preferred):
            if _int(size) and size > max_batch:
                found.append(
                    f"field `batching.preferred_batch_sizes[{i}]` must be at most "
                    f"max_batch_size {max_batch}, got {size}"
                )
    policy = table.get("version_policy")
    if (
        isinstance(policy, dict)
        and policy.get("policy") == "specific"
        and not policy.get("versions")
    ):
        found.append(
            "field `version_policy.versions` must be a non-empty list when policy = "
            f"'specific', got {policy.get('versions', [])!r}"
        )
    for key in ("inputs", "outputs"):
        entries = table.get(key)
        if isinstance(entries, list):
            names = [e.get("name") for e in entries if isinstance(e, dict)]
            if len(set(names)) != len(names):
                found.append(f"field `{key}` must be tensors with distinct names, got {names!r}")
    return found


def table_problems(table: Any, schema: Table, prefix: str) -> list[str]:
    """Every mistake in `table` against `schema`; keys are named `prefix` + key."""
    if not isinstance(table, dict):
        return [f"field `{prefix.rstrip('.')}` must be a table, got {_shown(table)}"]
    found = []
    for key, value in table.items():
        found += _key_problems(key, value, schema, prefix)
    for key, spec in schema.keys.items():
        if spec.required and key not in table:
            found.append(f"missing required field `{prefix}{key}`")
    return found


def _key_problems(key: str, value: Any, schema: Table, prefix: str) -> list[str]:
    spec = schema.keys.get(key)
    if spec is None and schema.entries is not None:
        expected, test, entry = schema.entries
        if not test(key):
            return [f"field `{prefix}{key}` must be {expected}, got {key!r}"]
        return table_problems(value, entry, f"{prefix}{key}.")
    if spec is None:
        return [_unknown(key, list(schema.keys), prefix)]
    if isinstance(spec, Table):
        return table_problems(value, spec, f"{prefix}{key}.")
    if isinstance(spec, TableArray):
        return _array_problems(value, spec, f"{prefix}{key}")
    if isinstance(spec, ListOf):
        return _list_problems(value, spec, f"{prefix}{key}")
    if not spec.check(value):
        return [f"field `{prefix}{key}` must be {spec.expected}, got {_shown(value)}"]
    return []


def _array_problems(value: Any, spec: TableArray, path: str) -> list[str]:
    if not isinstance(value, list) or not value:
        return [f"field `{path}` must be a non-empty array of [[{path}]] tables, got {value!r}"]
    found = []
    for i, entry in enumerate(value):
        found += table_problems(entry, spec.table, f"{path}[{i}].")
    return found


def _list_problems(value: Any, spec: ListOf, path: str) -> list[str]:
    if not isinstance(value, list) or (spec.non_empty and not value):
        size = "a non-empty list" if spec.non_empty else "a list"
        return [f"field `{path}` must be {size}, each item {spec.expected}, got {_shown(value)}"]
    return [
        f"field `{path}[{i}]` must be {spec.expected}, got {_shown(item)}"
        for i, item in enumerate(value)
        if not spec.check(item)
    ]


def _unknown(key: str, valid: list[str], prefix: str) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f"did you mean `{prefix}{close[0]}`?" if close else f"valid keys here: {sorted(valid)}"
    return f"unknown field `{prefix}{key}`: {hint}"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --- manifest.json, as the runtime reads it ------------------------------------------------------

# The keys `fleetinfer compile` writes (`fleetinfer.compile.manifest.Manifest`): the runtime uses
# `session_config` and `artifact_sha256`, and refuses keys nobody writes (a typo or a forgery).
MANIFEST_KEYS = (
    "model",
    "version",
    "source_version",
    "source_sha256",
    "artifact_sha256",
    "target",
    "precision",
    "quantization",
    "offline_optimization",
    "session_config",
    "accuracy",
    "performance",
    "tools",
    "created_at",
    "published",
    "notes",
    "format_version",
    "extra",
)
# ONNX Runtime session entries a manifest may set, all on/off switches ("0" or "1"): the one
# `fleetinfer compile` writes and the thread-spinning ones. Any other entry is refused: ONNX
# Runtime accepts unknown keys and odd values silently, and some entries change numerics.
SESSION_CONFIG_KEYS = (
    "mlas.enable_gemm_fastmath_arm64_bfloat16",
    "session.intra_op.allow_spinning",
    "session.inter_op.allow_spinning",
    "session.set_denormal_as_zero",
    "session.disable_prepacking",
)


def manifest_problems(table: Any) -> list[str]:
    """Every mistake in the parts of a `manifest.json` the runtime reads; [] when valid."""
    if not isinstance(table, dict):
        return [f"must be a JSON object, got {_shown(table)}"]
    found = [_unknown(k, list(MANIFEST_KEYS), "") for k in table if k not in MANIFEST_KEYS]
    digest = table.get("artifact_sha256")
    if digest is not None and not _sha256(digest):
        found.append(f"field 'artifact_sha256' must be a hex sha256 (64 digits), got {digest!r}")
    entries = table.get("session_config", {})
    if not isinstance(entries, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in entries.items()
    ):
        found.append(
            "field 'session_config' must map ONNX Runtime config keys to strings, "
            f"got {_shown(entries)}"
        )
        return found
    for key, value in entries.items():
        if key not in SESSION_CONFIG_KEYS:
            found.append(
                f"field 'session_config' has the unsupported entry {key!r}: supported entries "
                f"are {list(SESSION_CONFIG_KEYS)}"
            )
        elif value not in ("0", "1"):
            found.append(f'field \'session_config.{key}\' must be "0" or "1", got {value!r}')
    return found
