"""S3 for tests: the bucket and credentials of the `s3_endpoint` fixture (a moto_server on 127.0.0.1)."""

from __future__ import annotations

import socket

BUCKET = "tuneloop-sweeps"  # created empty by the s3_endpoint fixture
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
