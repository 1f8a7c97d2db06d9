"""boto3, an optional dependency (the `sqs` extra): one import for every AWS use."""

from __future__ import annotations

from typing import Any

from fleetinfer.errors import MissingExtraError


def import_boto3(purpose: str) -> Any:
    """The boto3 module; `MissingExtraError` naming `purpose` and the extra when absent."""
    try:
        import boto3
    except ImportError as exc:
        raise MissingExtraError("boto3", "sqs", purpose) from exc
    return boto3
