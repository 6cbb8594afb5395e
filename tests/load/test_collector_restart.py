"""The OTLP collector stopped and restarted during a load run: no prediction fails, export resumes."""

from __future__ import annotations

import time

from support.load_driver import Load, Outcome, describe, predictions, started_between
from support.otlp_receiver import OtlpReceiver
from support.processes import poll_until
from support.service_process import start_server

CLIENTS = 4
OUTAGE_SECONDS = 8  # longer than the exporter's batch interval (5 s) and its export timeout (5 s)


def exported(receiver: OtlpReceiver, outcomes: list[Outcome]) -> list[Outcome]:
    """Those of `outcomes` whose trace reached the receiver."""
    trace_ids = {span.trace_id for span in list(receiver.spans)}
    return [outcome for outcome in outcomes if outcome.trace_id in trace_ids]


def test_no_prediction_fails_while_the_collector_restarts(models_home, docs, tmp_path):
    receiver = OtlpReceiver().start()
    server = start_server(models_home, tmp_path, receiver.grpc_endpoint, "grpc", 1.0)
    try:
        with Load(server.url, CLIENTS, lambda client: predictions(docs.texts, client)) as load:
            poll_until(
                lambda: exported(receiver, load.snapshot()), timeout=30, what="traces before the outage"
            )
            stopped = time.monotonic()
            receiver.stop()
            time.sleep(OUTAGE_SECONDS)
            receiver.start()  # same ports: the service's exporter must reconnect by itself
            restarted = time.monotonic()
            poll_until(
                lambda: exported(receiver, started_between(load.snapshot(), restarted, time.monotonic())),
                timeout=60,
                what="traces of requests sent after the collector came back",
            )
        outcomes = load.snapshot()
    finally:
        server.stop()
        receiver.stop()

    failed = [outcome for outcome in outcomes if not outcome.ok]
    assert not failed, f"{len(failed)} of {len(outcomes)} predictions failed:\n{describe(failed)}"
    during = started_between(outcomes, stopped, restarted)
    assert len(during) >= 20, f"only {len(during)} predictions during the outage: it was not under load"
    complaints = [line for line in server.log_lines() if '"logger":"opentelemetry' in line]
    assert complaints, "the exporter never noticed the outage: was the collector really stopped?"
    print(
        f"{len(outcomes)} predictions, {len(during)} during the {OUTAGE_SECONDS} s outage, none failed; "
        f"{len(complaints)} exporter complaints logged"
    )
