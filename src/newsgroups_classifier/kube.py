"""The Kubernetes API, from inside a pod: the few calls the retraining Job and its trigger make.

Plain HTTPS to the API server's public REST API with the pod's service account (the token is read for
every call: the kubelet rotates it), standard library only: four verbs do not need a client library.
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


class ApiError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"Kubernetes API {status}: {message}")
        self.status = status


@dataclass
class Kube:
    server: str
    account: Path = ACCOUNT
    timeout: float = 30.0
    _context: ssl.SSLContext | None = field(default=None, repr=False)

    @classmethod
    def in_cluster(cls) -> Kube:
        host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
        return cls(f"https://{host}:{port}" if ":" not in host else f"https://[{host}]:{port}")

    @property
    def namespace(self) -> str:
        return (self.account / "namespace").read_text().strip()

    def get(self, path: str, **query: str) -> dict:
        return self.call("GET", path, query=query)

    def post(self, path: str, body: dict) -> dict:
        return self.call("POST", path, body, "application/json")

    def patch(self, path: str, body: dict, content_type: str = MERGE_PATCH) -> dict:
        return self.call("PATCH", path, body, content_type)

    def call(
        self,
        method: str,
        path: str,
        body: dict | None = None,
        content_type: str = "",
        query: dict | None = None,
    ) -> dict:
        url = self.server + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        request = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body else None)
        request.add_header("Authorization", f"Bearer {(self.account / 'token').read_text().strip()}")
        request.add_header("Accept", "application/json")
        if content_type:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self.context()) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("message", exc.reason)
            except ValueError:
                message = exc.reason
            raise ApiError(exc.code, f"{method} {path}: {message}") from exc
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            raise ApiError(0, f"{method} {path}: {getattr(exc, 'reason', exc)}") from exc

    def context(self) -> ssl.SSLContext:
        if self._context is None:
            self._context = ssl.create_default_context(cafile=str(self.account / "ca.crt"))
        return self._context
