"""A real S3-protocol server (moto) on 127.0.0.1 for the storage tests, and a backend-parametrised root."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from torchresume import storage


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    from moto.server import ThreadedMotoServer
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=endpoint)
    storage.configure()  # drop cached filesystems made before the endpoint was known
    yield endpoint
    server.stop()


@pytest.fixture
def bucket(s3_server: str) -> str:
    name = f"b-{uuid.uuid4().hex[:12]}"
    fs_storage, _ = storage.resolve(f"s3://{name}")
    fs_storage.fs.mkdir(name)  # type: ignore[attr-defined]
    return f"s3://{name}"


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> str:
    """A directory URL on each backend; the shared suite runs against both."""
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("bucket") + "/store"
