"""The cluster tier's stand-ins for what users run beside the stack, listening inside the node's network
namespace where the Services of stand-ins.yaml send: Loki's and Tempo's (the test suite's OTLP receivers:
Loki and Tempo, AGPL-3.0, are never run), and the alert webhook (what a user's relay to chat or paging
would be: Alertmanager posts every notification there). Run by the `observability` fixture
(tests/cluster/conftest.py):

    python -m support.stand_ins HOST LOKI_PORT TEMPO_PORT WEBHOOK_PORT DIR

Tempo's: OTLP gRPC on HOST:TEMPO_PORT, every export request written to DIR/tempo. Loki's: OTLP/HTTP under
/otlp on HOST:LOKI_PORT (Loki's native OTLP endpoint), written to DIR/loki, and on the same port Loki's
query API (`/loki/api/v1/query_range`, the contract of support/loki_contract.py) over what it received.
The webhook: HTTP on HOST:WEBHOOK_PORT, every POST body (Alertmanager's JSON) written to DIR/alerts with
the time it came. DIR/ready appears once all listen; SIGTERM stops them. `OtlpReceiver.read_dumps` reads
what the OTLP receivers got, `notifications` what the webhook got.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from support.loki_contract import QUERY_RANGE, Entry, QueryApi, ingested
from support.otlp_receiver import OtlpReceiver
from support.stack import loki_index_attributes


def stored(receiver: OtlpReceiver) -> list[Entry]:
    """What Loki would hold: every record received, ingested as Loki's OTLP endpoint documents."""
    index = loki_index_attributes()
    return [ingested(record, index) for record in receiver.log_records()]


def webhook(host: str, port: int, out: Path) -> ThreadingHTTPServer:
    """An HTTP server writing each POST's JSON body to `out` as {"received": time, "body": ...}."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received = time.time()
            written = out / f"{time.time_ns()}.tmp"
            written.write_text(json.dumps({"received": received, "body": body}))
            written.rename(written.with_suffix(".json"))  # whole, or not there yet
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):  # quiet
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def notifications(directory: Path) -> list[dict]:
    """What the webhook got, oldest first: {"received": seconds since the epoch, "body": Alertmanager's}."""
    return [json.loads(path.read_text()) for path in sorted((directory / "alerts").glob("*.json"))]


def main() -> None:
    host, out = sys.argv[1], Path(sys.argv[5])
    loki_port, tempo_port, webhook_port = (int(port) for port in sys.argv[2:5])
    for name in ("loki", "tempo", "alerts"):
        (out / name).mkdir(parents=True)
    tempo = OtlpReceiver(host=host, grpc_port=tempo_port, dump_dir=out / "tempo").start()
    loki = OtlpReceiver(http_prefix="/otlp", host=host, http_port=loki_port, dump_dir=out / "loki")
    loki.read_api[QUERY_RANGE] = QueryApi(lambda: stored(loki))
    loki.start()
    alerts = webhook(host, webhook_port, out / "alerts")
    (out / "ready").touch()
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    alerts.shutdown()
    tempo.stop()
    loki.stop()


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    main()
