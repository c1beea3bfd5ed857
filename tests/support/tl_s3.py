"""S3 for tests: the bucket and credentials of the `s3_endpoint` fixture (a moto_server on 127.0.0.1)."""

from __future__ import annotations

import socket

BUCKET = "tuneloop-sweeps"  # created empty by the s3_endpoint fixture
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def objects(endpoint: str, prefix: str) -> dict[str, bytes]:
    """Every object under `prefix` in the test bucket: {key without the prefix: its bytes}."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for item in page.get("Contents", []):
            found[item["Key"][len(prefix):]] = client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
    return found
