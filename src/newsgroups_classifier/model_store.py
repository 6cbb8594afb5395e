"""The model store: every published version of the model, kept in an S3 bucket (`make publish-model`,
the pods' init container, the retraining Job).

A version is published as BentoML's own export of it (`bentoml.models.export_model`, a `.bentomodel`
archive with the model's files and metadata) under `<model name>/<version>.bentomodel`, and fetched back
into a BentoML model store with `bentoml.models.import_model`: the serving path stays BentoML's. Versions
are hashes of data and settings (training.py), so an object, once published, never changes: publishing
a version that is there already uploads nothing, and every earlier version stays for a rollback.

    python -m newsgroups_classifier.model_store publish [TAG]   # default newsgroups_classifier:latest
    python -m newsgroups_classifier.model_store fetch [TAG]     # default: MODEL_TAG
    python -m newsgroups_classifier.model_store list
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import bentoml
import boto3
import botocore.exceptions
from botocore.config import Config

from .config import StoreSettings
from .logs import log_json
from .model import MODEL_NAME

SUFFIX = ".bentomodel"
log = logging.getLogger("newsgroups_classifier.model_store")


class StoreError(RuntimeError):
    """Something the operator must fix: the store unreachable, a missing bucket or version."""


@dataclass(frozen=True)
class Published:
    version: str
    time: datetime
    size: int


def s3_client(settings: StoreSettings):
    """A boto3 S3 client for the store. A custom endpoint (MinIO, any S3-compatible server) is addressed
    path-style: its buckets have no DNS names of their own."""
    config = Config(
        s3={"addressing_style": "path" if settings.model_store_endpoint else "auto"},
        retries={"mode": "standard", "max_attempts": 5},
        connect_timeout=5,
        read_timeout=60,
    )
    return boto3.client(
        "s3",
        endpoint_url=settings.model_store_endpoint or None,
        region_name=settings.model_store_region,
        config=config,
    )


class ModelStore:
    def __init__(self, settings: StoreSettings, client=None) -> None:
        self.bucket = settings.model_store_bucket
        self.where = f"s3://{self.bucket} at {settings.model_store_endpoint or 'AWS S3'}"
        self.client = client or s3_client(settings)

    @staticmethod
    def key(tag: bentoml.Tag) -> str:
        return f"{tag.name}/{tag.version}{SUFFIX}"

    def has(self, tag: bentoml.Tag) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(tag))
            return True
        except botocore.exceptions.ClientError as exc:
            if exc.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._error("look up", tag, exc) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise self._error("look up", tag, exc) from exc

    def publish(self, tag: str | bentoml.Tag) -> bentoml.Tag:
        """Upload a model of the local BentoML store (`latest` resolved); its exact tag."""
        model = bentoml.models.get(tag)
        if self.has(model.tag):
            log.info("published", extra={"fields": {"model_tag": str(model.tag), "uploaded": False}})
            return model.tag
        with tempfile.TemporaryDirectory() as tmp:
            archive = bentoml.models.export_model(model.tag, str(Path(tmp) / f"model{SUFFIX}"))
            try:
                self.client.upload_file(archive, self.bucket, self.key(model.tag))
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
                raise self._error("publish", model.tag, exc) from exc
        log.info("published", extra={"fields": {"model_tag": str(model.tag), "uploaded": True}})
        return model.tag

    def fetch(self, tag: str | bentoml.Tag) -> bentoml.Model:
        """The model in the local BentoML store, downloaded and imported unless it is there already."""
        tag = bentoml.Tag.from_taglike(tag)
        if not tag.version or tag.version == "latest":
            raise StoreError(f"fetch needs a version, not {tag}: the store keeps every version")
        try:
            return bentoml.models.get(tag)
        except bentoml.exceptions.NotFound:
            pass
        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(tmp) / f"model{SUFFIX}"
            try:
                self.client.download_file(self.bucket, self.key(tag), str(archive))
            except botocore.exceptions.ClientError as exc:
                if exc.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                    raise StoreError(
                        f"model {tag} is not in {self.where}: publish it (`make publish-model`) or "
                        "point MODEL_TAG at a published version (`python -m "
                        "newsgroups_classifier.model_store list`)"
                    ) from exc
                raise self._error("fetch", tag, exc) from exc
            except botocore.exceptions.BotoCoreError as exc:
                raise self._error("fetch", tag, exc) from exc
            model = bentoml.models.import_model(str(archive))
        log.info("fetched", extra={"fields": {"model_tag": str(model.tag)}})
        return model

    def versions(self, name: str = MODEL_NAME) -> list[Published]:
        """Every published version of `name`, newest first."""
        found = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=f"{name}/"
            )
            for page in pages:
                for item in page.get("Contents", []):
                    version = item["Key"].removeprefix(f"{name}/").removesuffix(SUFFIX)
                    if item["Key"].endswith(SUFFIX) and "/" not in version:
                        found.append(Published(version, item["LastModified"], item["Size"]))
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._error("list", bentoml.Tag(name), exc) from exc
        return sorted(found, key=lambda p: p.time, reverse=True)

    def _error(self, action: str, tag: bentoml.Tag, exc: Exception) -> StoreError:
        return StoreError(f"could not {action} {tag} in {self.where}: {exc}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    publish = commands.add_parser("publish", help="upload a model of the local BentoML store")
    publish.add_argument("tag", nargs="?", default=f"{MODEL_NAME}:latest")
    fetch = commands.add_parser("fetch", help="download a published model into the local BentoML store")
    fetch.add_argument("tag", nargs="?", default=os.environ.get("MODEL_TAG"))
    commands.add_parser("list", help="the published versions, newest first")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log_json(sys.stderr)  # stdout is the command's answer: a tag, or the list
    store = ModelStore(StoreSettings())
    try:
        if args.command == "publish":
            print(store.publish(args.tag))  # the exact tag, for `make publish-model`
        elif args.command == "fetch":
            if not args.tag:
                raise StoreError("no model to fetch: give a tag or set MODEL_TAG")
            store.fetch(args.tag)
        else:
            for published in store.versions():
                print(
                    f"{MODEL_NAME}:{published.version}  {published.time.isoformat()}  {published.size} bytes"
                )
    except (StoreError, bentoml.exceptions.NotFound) as exc:
        log.error("model store failed", extra={"fields": {"command": args.command, "error": str(exc)}})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
