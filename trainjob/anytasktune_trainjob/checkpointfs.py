"""The filesystem Ray Train writes checkpoints through: pyarrow's S3 client, built
from the same settings and the same (boto3-resolved) credentials as the S3 facade."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from anytasktune_contract.storage import StorageSettings


def pyarrow_filesystem(settings: StorageSettings) -> Any:
    import boto3
    import pyarrow.fs as pafs

    kwargs: dict[str, Any] = {"region": settings.region}
    creds = boto3.session.Session().get_credentials()
    if creds is not None:
        frozen = creds.get_frozen_credentials()
        kwargs.update(access_key=frozen.access_key, secret_key=frozen.secret_key)
        if frozen.token:
            kwargs["session_token"] = frozen.token
    if settings.endpoint:
        parsed = urlparse(settings.endpoint if "://" in settings.endpoint else f"https://{settings.endpoint}")
        kwargs["endpoint_override"] = parsed.netloc + parsed.path.rstrip("/")
        kwargs["scheme"] = parsed.scheme or "https"
    if settings.addressing_style == "virtual":
        kwargs["force_virtual_addressing"] = True
    return pafs.S3FileSystem(**kwargs)
