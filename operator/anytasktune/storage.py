"""The operator's S3 access: reading adapter manifests (boto3, standard credential chain)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlparse

from anytasktune.spec import Storage


def split_uri(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an s3:// URI: {uri}")
    return parsed.netloc, parsed.path.lstrip("/")


def client(storage: Storage) -> Any:
    import boto3
    from botocore.config import Config

    style = {"auto": None, "path": "path", "virtual": "virtual"}[storage.addressingStyle]
    s3: Any = {"addressing_style": style} if style else {}
    config = Config(retries={"max_attempts": 5, "mode": "standard"}, s3=s3)
    return boto3.client("s3", endpoint_url=storage.endpoint, region_name=storage.region, config=config)


def read_json(uri: str, storage: Storage) -> dict[str, Any]:
    bucket, key = split_uri(uri)
    body = client(storage).get_object(Bucket=bucket, Key=key)["Body"].read()
    return json.loads(body)  # type: ignore[no-any-return]
