"""The service with other settings of its speed levers, for `make bench` to measure beside the shipped
one: how each API method runs (`BENCH_PREDICT`, `BENCH_BATCH`: `async` on the event loop or `sync` in
BentoML's request thread; shipped: async /predict, sync /predict_batch) and the adaptive batching's
`max_latency_ms` (`BENCH_MAX_LATENCY_MS`, shipped 1000).

    BENCH_PREDICT=sync bentoml serve service_variants:Variant --working-dir load_testing
"""

from __future__ import annotations

import os
from typing import Annotated

import bentoml
from bentoml.validators import ContentType

from newsgroups_classifier.classifier import BatchText, Classifier, Prediction, resolve_model
from newsgroups_classifier.config import Settings
from newsgroups_classifier.guard import RequestGuard
from newsgroups_classifier.tracing import export_resource_attributes

ASYNC_PREDICT = os.environ.get("BENCH_PREDICT", "async") == "async"
ASYNC_BATCH = os.environ.get("BENCH_BATCH", "sync") == "async"
MAX_LATENCY_MS = int(os.environ.get("BENCH_MAX_LATENCY_MS", "1000"))
Predictions = Annotated[list[Prediction], ContentType("application/json")]
settings = Settings()
STORED_MODEL = resolve_model(settings.model_tag)
export_resource_attributes(settings, STORED_MODEL.tag.version)


@bentoml.service(name="newsgroups-classifier", workers=settings.workers)
class Variant:
    model_ref = bentoml.models.BentoModel(str(STORED_MODEL.tag))

    def __init__(self) -> None:
        self.classifier = Classifier(self.model_ref, settings)

    @bentoml.on_shutdown
    def flush_telemetry(self) -> None:
        self.classifier.flush_telemetry()

    if ASYNC_PREDICT:

        @bentoml.api(route="/predict")
        async def predict(self, text: str) -> Prediction:
            return self.classifier.predict([BatchText(text=text)], "predict")[0]

    else:

        @bentoml.api(route="/predict")
        def predict(self, text: str) -> Prediction:
            return self.classifier.predict([BatchText(text=text)], "predict")[0]

    batching = {"batchable": True, "max_batch_size": 256, "max_latency_ms": MAX_LATENCY_MS}
    if ASYNC_BATCH:

        @bentoml.api(route="/predict_batch", **batching)
        async def predict_batch(self, texts: list[BatchText]) -> Predictions:
            return self.classifier.predict(texts, "predict_batch")

    else:

        @bentoml.api(route="/predict_batch", **batching)
        def predict_batch(self, texts: list[BatchText]) -> Predictions:
            return self.classifier.predict(texts, "predict_batch")


Variant.add_asgi_middleware(
    RequestGuard, max_body_bytes=settings.max_body_bytes, max_batch_size=settings.max_batch_size
)
