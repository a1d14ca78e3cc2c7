"""Object stores against moto's S3 server: SHA-256 checksums that verify multipart and SSE-KMS uploads,
which an ETag cannot (it is the MD5 only of a single-part object without SSE-KMS)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pvbuild.services.stores import ObjectInfo, S3ObjectStore, file_sha256, matches, put_verified
from tests.aws import Moto, moto_server

PART = 5 * 1024 * 1024  # S3's smallest part


@pytest.fixture(scope="module")
def moto() -> Iterator[Moto]:
    with moto_server() as running:
        yield running


def store(moto: Moto, bucket: str, kms: bool = False) -> S3ObjectStore:
    s3 = moto.client("s3")
    s3.create_bucket(Bucket=bucket)
    key = moto.client("kms").create_key()["KeyMetadata"]["KeyId"] if kms else ""
    return S3ObjectStore(s3, bucket, kms_key_id=key, part_size=PART)


def test_a_multipart_kms_encrypted_upload_verifies_by_its_checksum(moto: Moto, tmp_path: Path) -> None:
    path = tmp_path / "model.tar.gz"
    path.write_bytes(os.urandom(2 * PART + 1234))  # three parts
    encrypted = store(moto, "pv-kms", kms=True)
    entry, sent = put_verified(encrypted, "output/model.tar.gz", path)
    assert sent and entry["sha256"] == file_sha256(path, PART) and entry["sha256"].endswith("-3")
    reply = encrypted.client.head_object(Bucket="pv-kms", Key="output/model.tar.gz")
    assert reply["ServerSideEncryption"] == "aws:kms" and reply["SSEKMSKeyId"]
    assert put_verified(encrypted, "output/model.tar.gz", path)[1] is False  # there and the same: not sent again

    path.write_bytes(path.read_bytes()[:-1] + b"!")  # one byte differs: sent again
    assert put_verified(encrypted, "output/model.tar.gz", path)[1] is True


def test_a_single_part_upload_records_its_checksum(moto: Moto, tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text('{"question": "q", "answer": "a"}\n', encoding="utf-8")
    entry, _ = put_verified(store(moto, "pv-plain"), "data/train.jsonl", path)
    assert entry["sha256"] == file_sha256(path) and "-" not in entry["sha256"]


def test_the_checksum_decides_where_the_store_keeps_one() -> None:
    etag, checksum = "900150983cd24fb0d6963f7d28e17f72", "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="  # of "abc"
    expected = {"size": 3, "etag": etag, "sha256": checksum}
    assert matches(ObjectInfo(3, "not-an-md5-with-sse-kms", checksum), expected)  # the checksum holds
    assert not matches(ObjectInfo(3, etag, "AAAA" + checksum[4:]), expected)
    assert matches(ObjectInfo(3, etag), expected)  # a store that keeps no checksum: the ETag
    assert matches(ObjectInfo(3, "x", checksum), {**expected, "sha256": checksum + "-2"})  # "-N" left off
