"""Signed prediction ids: any worker or replica can score feedback without shared prediction state."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


class FeedbackError(ValueError):
    """A prediction id that cannot be scored; `reason` is the metric label."""

    def __init__(self, reason: str, message: str, status: int = 400):
        super().__init__(message)
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class PredictionRef:
    model_version: str
    label: str
    issued_at: int
    nonce: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class PredictionIdSigner:
    """`<payload>.<hmac>`, where the payload carries what scoring needs: model version, label, time."""

    def __init__(self, key: bytes, max_age_seconds: int):
        self._key = key
        self._max_age = max_age_seconds

    def issue(self, model_version: str, label: str, now: float | None = None) -> str:
        payload = "|".join([model_version, label, str(int(now or time.time())), secrets.token_hex(8)])
        encoded = _b64(payload.encode())
        return f"{encoded}.{self._sign(encoded)}"

    def verify(self, prediction_id: str, now: float | None = None) -> PredictionRef:
        encoded, dot, signature = prediction_id.partition(".")
        # compare_digest takes ASCII text only: any other character makes the id malformed, not a 500
        if not dot or not encoded or not signature or len(prediction_id) > 512 or not prediction_id.isascii():
            raise FeedbackError("malformed_id", "prediction_id is malformed: expected <payload>.<signature>")
        if not hmac.compare_digest(signature, self._sign(encoded)):
            raise FeedbackError(
                "unknown_id", "prediction_id is unknown: its signature does not match this service", 404
            )
        try:
            version, label, issued, nonce = _unb64(encoded).decode().split("|")
            ref = PredictionRef(version, label, int(issued), nonce)
        except (ValueError, UnicodeDecodeError) as exc:
            raise FeedbackError("malformed_id", "prediction_id payload is malformed") from exc
        age = (now or time.time()) - ref.issued_at
        if age > self._max_age:
            raise FeedbackError(
                "expired_id",
                f"prediction_id expired: issued {int(age)} s ago, feedback is accepted for {self._max_age} s",
                status=410,
            )
        return ref

    def _sign(self, encoded: str) -> str:
        return _b64(hmac.new(self._key, encoded.encode(), hashlib.sha256).digest()[:18])


def signing_key(configured: str, home: Path) -> bytes:
    """The configured key (a Kubernetes Secret), or one generated once per local home for its workers."""
    if configured:
        return configured.encode()
    path = home / "feedback-signing.key"
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(secrets.token_hex(32))
        try:
            os.link(partial, path)  # atomic and fails if another worker won the race
        except FileExistsError:
            pass
        finally:
            partial.unlink()
    return path.read_text().strip().encode()


class SeenIds:
    """Feedback already recorded, shared by the workers of one instance (SQLite, WAL).

    One connection per instance of this class, used by the request threads in turn. Replicas do not
    share it: duplicates sent to different replicas are removed again, by prediction id, when the
    prediction events are exported for labelling.
    """

    def __init__(self, path: Path, max_age_seconds: int):
        self._db = sqlite3.connect(path, timeout=5, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS seen (nonce TEXT PRIMARY KEY, issued_at INTEGER)")
        self._lock = threading.Lock()  # a connection must not run two statements at once
        self._max_age = max_age_seconds

    @contextmanager
    def claim(self, ref: PredictionRef) -> Iterator[None]:
        """Hold `ref` as recorded while the block runs; if the block raises, it was never recorded.

        The block writes the feedback's log event: with the claim and the write in one transaction,
        a crash before the write leaves the id unclaimed, so the client's retry is not a duplicate.
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")  # the other workers' claims wait (timeout 5 s)
            try:
                self._db.execute("INSERT INTO seen VALUES (?, ?)", (ref.nonce, ref.issued_at))
            except sqlite3.IntegrityError as exc:
                self._db.execute("ROLLBACK")
                raise FeedbackError(
                    "duplicate_id", "feedback for this prediction_id was already recorded", status=409
                ) from exc
            try:
                yield
                # Ids past their age are rejected before they get here, so their rows can go.
                self._db.execute("DELETE FROM seen WHERE issued_at < ?", (int(time.time()) - self._max_age,))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
