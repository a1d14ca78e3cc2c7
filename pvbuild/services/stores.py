"""Object stores: where the dataset and the trained model live between steps.

``ObjectStore`` is the seam: ``LocalObjectStore`` keeps objects in a directory (the default
profile, no network), ``S3ObjectStore`` talks to S3 or any S3-compatible endpoint through
boto3. Both report an object's size and ETag (the MD5 of its bytes, or S3's multipart form),
so the upload marker can be verified the same way against either. S3 uploads also ask for S3's
SHA-256 checksum (``ChecksumAlgorithm``) and are verified by it where the store reports one: an
ETag is the MD5 only for single-part objects without SSE-KMS, the checksum holds for multipart and
KMS-encrypted objects alike.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pvbuild.errors import PvbuildError
from pvbuild.files import atomic_write_bytes

# Uploads above this size go in parts of this size; the expected ETag is computed the same way.
PART_SIZE = 64 * 1024 * 1024


class StorageError(PvbuildError):
    """An object store call failed; the message carries the service's own reason."""


@dataclass(frozen=True)
class ObjectInfo:
    """What the store says about one object."""

    size: int
    etag: str
    sha256: str = ""  # S3's SHA-256 checksum (base64; "-N" for N parts), "" when the store keeps none


def matches(info: ObjectInfo, expected: Mapping[str, Any]) -> bool:
    """Whether the stored object is the expected one: by size and checksum where the store keeps a checksum
    and one is expected, else by size and ETag. (Some S3-compatible services leave the ``-N`` off a
    multipart checksum; the digest part decides.)"""
    if info.size != expected["size"]:
        return False
    if info.sha256 and expected.get("sha256"):
        return info.sha256.split("-")[0] == str(expected["sha256"]).split("-")[0]
    return info.etag == expected["etag"]


def _md5(data: bytes) -> Any:
    return hashlib.md5(data, usedforsecurity=False)


def file_checksums(path: Path, part_size: int = PART_SIZE) -> tuple[str, str]:
    """The ETag and the SHA-256 checksum S3 gives ``path`` uploaded with ``part_size`` parts, in one read:
    of the bytes (MD5 hex; SHA-256 base64), or of the parts' digests + ``-N``, as S3 writes them."""
    md5s, sha256s = [], []
    with path.open("rb") as stream:
        while chunk := stream.read(part_size):
            md5s.append(_md5(chunk).digest())
            sha256s.append(hashlib.sha256(chunk).digest())
    if len(md5s) <= 1:
        data_md5 = md5s[0] if md5s else _md5(b"").digest()
        data_sha = sha256s[0] if sha256s else hashlib.sha256(b"").digest()
        return data_md5.hex(), base64.b64encode(data_sha).decode("ascii")
    suffix = f"-{len(md5s)}"
    return (_md5(b"".join(md5s)).hexdigest() + suffix,
            base64.b64encode(hashlib.sha256(b"".join(sha256s)).digest()).decode("ascii") + suffix)


def file_etag(path: Path, part_size: int = PART_SIZE) -> str:
    """The ETag S3 gives ``path`` uploaded with ``part_size`` parts: MD5, or MD5 of part MD5s + ``-N``."""
    return file_checksums(path, part_size)[0]


def file_sha256(path: Path, part_size: int = PART_SIZE) -> str:
    """The SHA-256 checksum S3 keeps for ``path`` uploaded with ``part_size`` parts (base64; ``-N`` for parts)."""
    return file_checksums(path, part_size)[1]


class ObjectStore(Protocol):
    """A bucket-like store addressed by keys; ``uri`` is what records show."""

    def uri(self, key: str) -> str: ...

    def key(self, uri: str) -> str: ...

    def head(self, key: str) -> ObjectInfo | None: ...

    def put(self, key: str, path: Path) -> ObjectInfo: ...

    def copy(self, source: str, key: str) -> ObjectInfo:
        """Copy an object inside the store (on S3 without the bytes passing through this machine)."""
        ...

    def keys(self, prefix: str) -> list[str]: ...

    def get(self, key: str, path: Path) -> None: ...


class LocalObjectStore:
    """Objects as files under a root directory. URIs read ``local://<key>`` so records hold no
    machine-specific path."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise StorageError(f"object key {key!r} leaves the store {self.root}")
        return path

    def uri(self, key: str) -> str:
        return f"local://{key}"

    def key(self, uri: str) -> str:
        if not uri.startswith("local://"):
            raise StorageError(f"{uri} is not an object of the local store (local://...)")
        return uri[len("local://"):]

    def head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        if not path.is_file():
            return None
        return ObjectInfo(size=path.stat().st_size, etag=file_etag(path))

    def put(self, key: str, path: Path) -> ObjectInfo:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.uploading")
        shutil.copyfile(path, temporary)
        temporary.replace(target)
        info = self.head(key)
        assert info is not None
        return info

    def copy(self, source: str, key: str) -> ObjectInfo:
        origin = self._path(source)
        if not origin.is_file():
            raise StorageError(f"{self.uri(source)}: no such object to copy")
        return self.put(key, origin)

    def keys(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if base.is_file():
            return [prefix]
        return sorted(str(p.relative_to(self.root.resolve())) for p in base.rglob("*")
                      if p.is_file() and not p.name.startswith("."))

    def get(self, key: str, path: Path) -> None:
        source = self._path(key)
        if not source.is_file():
            raise StorageError(f"{self.uri(key)}: no such object")
        atomic_write_bytes(path, source.read_bytes())


class S3ObjectStore:
    """Objects in an S3 bucket (``s3://`` URIs); ``client`` is a boto3 S3 client."""

    def __init__(self, client: Any, bucket: str, kms_key_id: str = "", part_size: int = PART_SIZE) -> None:
        self.client = client
        self.bucket = bucket
        self.part_size = part_size
        # Every write asks for S3's SHA-256 checksum; with a KMS key, SSE-KMS encryption too.
        self.write_args: dict[str, str] = {"ChecksumAlgorithm": "SHA256"}
        if kms_key_id:
            self.write_args |= {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key_id}

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def key(self, uri: str) -> str:
        prefix = f"s3://{self.bucket}/"
        if not uri.startswith(prefix):
            raise StorageError(f"{uri} is not an object of this store's bucket ({prefix}...)")
        return uri[len(prefix):]

    def _call(self, what: str, key: str, method: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return method(**kwargs)
        except ClientError as error:
            raise StorageError(f"{what} {self.uri(key)}: {error.response.get('Error', {}).get('Message', error)}") \
                from error
        except BotoCoreError as error:
            raise StorageError(f"{what} {self.uri(key)}: {error}") from error

    def head(self, key: str) -> ObjectInfo | None:
        from botocore.exceptions import ClientError

        try:
            reply = self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise StorageError(f"head {self.uri(key)}: {error}") from error
        return ObjectInfo(size=int(reply["ContentLength"]), etag=str(reply["ETag"]).strip('"'),
                          sha256=str(reply.get("ChecksumSHA256") or ""))

    def put(self, key: str, path: Path) -> ObjectInfo:
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(multipart_threshold=self.part_size + 1, multipart_chunksize=self.part_size)
        self._call("upload to", key, self.client.upload_file, Filename=str(path), Bucket=self.bucket, Key=key,
                   Config=config, ExtraArgs=dict(self.write_args))
        info = self.head(key)
        if info is None:
            raise StorageError(f"{self.uri(key)}: uploaded but not found afterwards")
        return info

    def copy(self, source: str, key: str) -> ObjectInfo:
        # One CopyObject (up to 5 GB): the copy keeps a single-part object's MD5 ETag; the managed
        # copy would cut it into parts and change the ETag the marker records.
        self._call("copy to", key, self.client.copy_object, Bucket=self.bucket, Key=key,
                   CopySource={"Bucket": self.bucket, "Key": source}, **self.write_args)
        info = self.head(key)
        if info is None:
            raise StorageError(f"{self.uri(key)}: copied but not found afterwards")
        return info

    def keys(self, prefix: str) -> list[str]:
        found: list[str] = []
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        for page in self._call("list", prefix, lambda: list(pages)):
            found += [entry["Key"] for entry in page.get("Contents", [])]
        return sorted(found)

    def get(self, key: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.downloading")
        self._call("download", key, self.client.download_file, Bucket=self.bucket, Key=key, Filename=str(temporary))
        temporary.replace(path)


def put_verified(store: ObjectStore, key: str, path: Path) -> tuple[dict[str, Any], bool]:
    """Upload ``path`` unless an identical object is there, and verify it (``matches``); return
    ``{"uri", "size", "etag"}`` (and ``"sha256"`` where the store keeps checksums) and whether it was sent."""
    part_size = int(getattr(store, "part_size", PART_SIZE))
    etag, checksum = file_checksums(path, part_size)  # one read of a file that may be a 500 MB model
    expected = {"size": path.stat().st_size, "etag": etag, "sha256": checksum}
    present = store.head(key)
    sent = present is None or not matches(present, expected)
    if sent:
        present = store.put(key, path)
        if not matches(present, expected):
            raise StorageError(f"{store.uri(key)}: verification failed after upload: expected {expected}, "
                               f"the store has {_described(present)}")
    assert present is not None
    return {"uri": store.uri(key), **_recorded(expected, present)}, sent


def _recorded(expected: Mapping[str, Any], present: ObjectInfo) -> dict[str, Any]:
    """What the marker keeps of a verified object: size and ETag, and the checksum where the store keeps one."""
    return {"size": expected["size"], "etag": expected["etag"], **({"sha256": expected["sha256"]}
                                                                   if present.sha256 else {})}


def _described(info: ObjectInfo) -> str:
    return f"size {info.size}, ETag {info.etag}" + (f", SHA-256 {info.sha256}" if info.sha256 else "")


def copy_verified(store: ObjectStore, source: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    """Copy the object of an earlier marker entry ``source`` (same bytes) to ``key`` and verify it, so
    an unchanged shard of a new dataset is not uploaded again; None when that object is gone or
    changed, or was sent in parts (its copy would get another ETag and checksum): then it is uploaded."""
    expected = {name: source[name] for name in ("size", "etag", "sha256") if name in source}
    if "-" in str(source["etag"]) or "-" in str(source.get("sha256", "")):
        return None
    present = store.head(key)
    if present is None or not matches(present, expected):
        original = store.head(source["key"])
        if original is None or not matches(original, expected):
            return None
        present = store.copy(source["key"], key)
        if not matches(present, expected):
            raise StorageError(f"{store.uri(key)}: verification failed after copying {store.uri(source['key'])}: "
                               f"expected {expected}, the store has {_described(present)}")
    return {"uri": store.uri(key), **expected}


def download_prefix(store: ObjectStore, prefix: str, directory: Path) -> list[str]:
    """Every object under ``prefix`` into ``directory``, at its key relative to the prefix; the keys."""
    keys = store.keys(prefix)
    for key in keys:
        store.get(key, directory / key[len(prefix):].lstrip("/"))
    return keys


def aws_client(service: str, aws: Mapping[str, Any]) -> Any:
    """A boto3 client from the credentials chain; ``aws.endpoint_url`` points it at any compatible service."""
    import boto3

    kwargs: dict[str, Any] = {}
    if aws.get("region"):
        kwargs["region_name"] = aws["region"]
    if aws.get("endpoint_url"):
        kwargs["endpoint_url"] = aws["endpoint_url"]
    return boto3.session.Session().client(service, **kwargs)
