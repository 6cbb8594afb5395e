"""The model store's S3 server in the tests: versitygw (Apache-2.0, `make stack-bin`), standing in for MinIO
(AGPL-3.0, never run here), serving a bucket from a directory.

    python -m support.s3_store HOST PORT DIR   # run it in the foreground (the cluster tier's stand-in)
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import boto3

from newsgroups_classifier.config import StoreSettings
from support.processes import GiveUp, free_port, poll_until, stop_process, tail
from support.stack import binary

ACCESS_KEY = "newsgroups-models"
SECRET_KEY = "test-secret-key-of-the-model-store"


def s3_client(endpoint: str):
    """A plain boto3 client of the test's store (the code under test makes its own)."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )


def command(host: str, port: int, directory: Path) -> tuple[list[str], dict[str, str]]:
    """versitygw serving `directory` (one folder per bucket) on host:port, with one account."""
    env = {**os.environ, "ROOT_ACCESS_KEY": ACCESS_KEY, "ROOT_SECRET_KEY": SECRET_KEY}
    return [str(binary("versitygw")), "--port", f"{host}:{port}", "posix", str(directory)], env


@dataclass
class S3Store:
    endpoint: str
    bucket: str
    process: subprocess.Popen
    log: Path

    def env(self) -> dict[str, str]:
        """What a program of ours needs to use the store (the model store's settings, boto3's keys)."""
        return {
            "MODEL_STORE_ENDPOINT": self.endpoint,
            "MODEL_STORE_BUCKET": self.bucket,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        }

    def objects(self) -> list[str]:
        """The keys in the bucket: its files, since versitygw's posix backend keeps objects as files."""
        root = self.root / self.bucket
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    @property
    def root(self) -> Path:
        return self.log.parent / "data"

    def stop(self) -> None:
        stop_process(self.process)


def start_store(workdir: Path) -> S3Store:
    """versitygw on 127.0.0.1 with the shipped bucket (manifests/model-store.yaml's) made empty."""
    data = workdir / "data"
    bucket = StoreSettings.model_construct().model_store_bucket
    (data / bucket).mkdir(parents=True)  # the posix backend's bucket is a directory
    port, log = free_port(), workdir / "versitygw.log"
    args, env = command("127.0.0.1", port, data)
    with open(log, "ab") as out:
        process = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    store = S3Store(f"http://127.0.0.1:{port}", bucket, process, log)
    client = s3_client(store.endpoint)

    def serving() -> bool:
        if process.poll() is not None:
            raise GiveUp(f"versitygw exited with {process.returncode}:\n{tail(log)}")
        return client.list_objects_v2(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 200

    poll_until(serving, timeout=30, what="versitygw to serve the bucket")
    return store


def main() -> None:
    host, port, directory = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    args, env = command(host, port, directory)
    os.execve(args[0], args, env)


if __name__ == "__main__":
    main()
