"""moto's server mode on 127.0.0.1: real boto3 HTTP calls to S3 and SageMaker, no AWS account."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIAMOTOTESTKEY00000", "AWS_SECRET_ACCESS_KEY": "moto-secret-do-not-leak-42",
                    "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class Moto:
    """A running moto server and a boto3 client factory pointed at it."""

    url: str

    def client(self, service: str) -> Any:
        import boto3

        return boto3.session.Session().client(service, endpoint_url=self.url, region_name="us-east-1")


@contextmanager
def fake_credentials() -> Iterator[None]:
    """Fake AWS credentials in the environment for boto3's chain, restored afterwards."""
    saved = {key: os.environ.get(key) for key in FAKE_CREDENTIALS}
    os.environ.update(FAKE_CREDENTIALS)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def moto_server() -> Iterator[Moto]:
    """Start moto on a free port with fake credentials in the environment."""
    from moto.server import ThreadedMotoServer

    with fake_credentials():
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield Moto(f"http://{host}:{port}")
        finally:
            server.stop()
