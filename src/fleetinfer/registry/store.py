"""Registry storage: keys (slash-separated paths) to bytes, in a folder or an S3 prefix.

`open_store(url)` picks the backend: `file:///abs/path` (or a bare path) and
`s3://bucket/prefix?endpoint_url=…&region=…`. Both keep one contract, pinned by the contract test
over both: `get` (None when absent), `put` (with `if_absent=True`, False when the key exists and
nothing is written), `list(prefix)` (keys under it, sorted) and `delete`. A write is whole or not
at all: the file backend writes a temporary file and renames it, S3 puts objects atomically.
Storage that cannot be reached raises `RegistryUnavailableError`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from fleetinfer.aws import import_boto3
from fleetinfer.errors import ConfigError, RegistryUnavailableError


class RegistryStore(ABC):
    """Keys to bytes; what the registry layout is built on."""

    url: str

    @abstractmethod
    def get(self, key: str) -> bytes | None: ...

    @abstractmethod
    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> bool: ...

    @abstractmethod
    def list(self, prefix: str) -> list[str]: ...

    @abstractmethod
    def delete(self, key: str) -> None: ...


def checked_key(key: str) -> str:
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") for p in parts):
        raise ConfigError(f"registry key {key!r} is not a relative path of plain names")
    return key


class FileStore(RegistryStore):
    """A folder; the embedded default."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.url = f"file://{self.root.resolve()}"

    def _path(self, key: str) -> Path:
        return self.root / checked_key(key)

    def get(self, key: str) -> bytes | None:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            if not self.root.is_dir():
                raise RegistryUnavailableError(
                    f"registry folder {self.root} is missing: mount it or fix the registry URL"
                ) from None
            return None
        except OSError as exc:
            raise RegistryUnavailableError(
                f"registry {self.url}: cannot read {key}: {exc}"
            ) from exc

    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> bool:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".put-")
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            if if_absent:
                try:
                    os.link(tmp, path)  # fails if the key exists: first writer wins
                except FileExistsError:
                    return False
                finally:
                    os.unlink(tmp)
                return True
            os.replace(tmp, path)
            return True
        except OSError as exc:
            raise RegistryUnavailableError(
                f"registry {self.url}: cannot write {key}: {exc}"
            ) from exc

    def list(self, prefix: str) -> list[str]:
        base = self.root / prefix if prefix else self.root
        if not self.root.is_dir():
            raise RegistryUnavailableError(
                f"registry folder {self.root} is missing: mount it or fix the registry URL"
            )
        if not base.is_dir():
            return []
        keys = (p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file())
        return sorted(k for k in keys if not k.rsplit("/", 1)[-1].startswith(".put-"))

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()


class S3Store(RegistryStore):
    """An S3 prefix (boto3, imported lazily)."""

    def __init__(self, url: str) -> None:
        parsed = urlparse(url)
        if not parsed.netloc:
            raise ConfigError(f"registry URL {url!r} names no bucket: use s3://bucket/prefix")
        query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        self.url, self.bucket = url, parsed.netloc
        self.prefix = parsed.path.strip("/")
        boto3 = import_boto3("the S3 model registry")
        from botocore.config import Config

        config = Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 2})
        self.client: Any = boto3.client(
            "s3",
            endpoint_url=query.get("endpoint_url"),
            region_name=query.get("region", os.environ.get("AWS_DEFAULT_REGION", "us-east-1")),
            config=config,
        )

    def _key(self, key: str) -> str:
        checked_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def get(self, key: str) -> bytes | None:
        with self._translate(key):
            try:
                response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            except self.client.exceptions.NoSuchKey:
                return None
            data: bytes = response["Body"].read()
            return data

    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> bool:
        with self._translate(key):
            if if_absent and self._exists(key):
                return False
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
            return True

    def _exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def list(self, prefix: str) -> list[str]:
        full = self._key(prefix) + "/" if prefix else (self.prefix + "/" if self.prefix else "")
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys: list[str] = []
        with self._translate(prefix):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full
            )
            for page in pages:
                keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        return sorted(keys)

    def delete(self, key: str) -> None:
        with self._translate(key):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    @contextmanager
    def _translate(self, key: str) -> Iterator[None]:
        from botocore import exceptions as boto_errors

        try:
            yield
        except boto_errors.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code == "NoSuchBucket":
                raise ConfigError(
                    f"registry {self.url}: bucket {self.bucket!r} does not exist: create it "
                    "or fix the registry URL"
                ) from exc
            raise RegistryUnavailableError(f"registry {self.url}: {key}: {exc}") from exc
        except boto_errors.NoCredentialsError as exc:
            raise ConfigError(
                f"registry {self.url} found no AWS credentials: set AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY or an AWS profile"
            ) from exc
        except boto_errors.BotoCoreError as exc:
            raise RegistryUnavailableError(
                f"registry {self.url} cannot be reached: {exc}; nodes keep serving what they "
                "have; check endpoint_url and the network"
            ) from exc


def open_store(url: str) -> RegistryStore:
    """The store a registry URL names: `file:///path`, a bare path, or `s3://bucket/prefix`."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        return S3Store(url)
    if parsed.scheme == "file":
        return FileStore(parsed.path)
    if parsed.scheme == "":
        return FileStore(url)
    raise ConfigError(
        f"registry URL {url!r} has scheme {parsed.scheme!r}: expected file:///path or "
        "s3://bucket/prefix"
    )
