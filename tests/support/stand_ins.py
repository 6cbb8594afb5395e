"""Loki's and Tempo's stand-ins in the cluster tier: the test suite's OTLP receivers, listening inside the
node's network namespace where the Services `loki` and `tempo` (stand-ins.yaml) send the collector's
exports. Loki and Tempo (AGPL-3.0) are never run. Run by the `observability` fixture
(tests/cluster/conftest.py):

    python -m support.stand_ins HOST LOKI_PORT TEMPO_PORT DIR

Tempo's: OTLP gRPC on HOST:TEMPO_PORT, every export request written to DIR/tempo. Loki's: OTLP/HTTP under
/otlp on HOST:LOKI_PORT (Loki's native OTLP endpoint), written to DIR/loki, and on the same port Loki's
query API (`/loki/api/v1/query_range`, the contract of support/loki_contract.py) over what it received.
DIR/ready appears once both listen; SIGTERM stops them. `OtlpReceiver.read_dumps` reads what they got.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from support.loki_contract import Entry, answer, ingested
from support.otlp_receiver import OtlpReceiver
from support.stack import loki_index_attributes


def stored(receiver: OtlpReceiver) -> list[Entry]:
    """What Loki would hold: every record received, ingested as Loki's OTLP endpoint documents."""
    index = loki_index_attributes()
    return [ingested(record, index) for record in receiver.log_records()]


def main() -> None:
    host, loki_port, tempo_port, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
    for name in ("loki", "tempo"):
        (out / name).mkdir(parents=True)
    tempo = OtlpReceiver(host=host, grpc_port=tempo_port, dump_dir=out / "tempo").start()
    loki = OtlpReceiver(http_prefix="/otlp", host=host, http_port=loki_port, dump_dir=out / "loki")
    loki.queries["/loki/api/v1/query_range"] = lambda params: answer(stored(loki), params)
    loki.start()
    (out / "ready").touch()
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    tempo.stop()
    loki.stop()


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    main()
