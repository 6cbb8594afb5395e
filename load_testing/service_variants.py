"""The service with other settings of two levers, for `make bench` to measure beside the shipped one:
API methods that run on the event loop (`BENCH_API=async`) or in BentoML's request thread (`sync`, as
shipped), and the adaptive batching's `max_latency_ms` (`BENCH_MAX_LATENCY_MS`, shipped 1000).

    bentoml serve service_variants:Variant --working-dir load_testing
"""

from __future__ import annotations

import os

import bentoml

from newsgroups_classifier.classifier import BatchText, Classifier, Prediction, resolve_model
from newsgroups_classifier.config import Settings
from newsgroups_classifier.guard import RequestGuard
from newsgroups_classifier.tracing import export_resource_attributes

ASYNC = os.environ.get("BENCH_API", "sync") == "async"
MAX_LATENCY_MS = int(os.environ.get("BENCH_MAX_LATENCY_MS", "1000"))
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

    if ASYNC:  # the model call runs on the event loop: no thread hand-off, and no other request meanwhile

        @bentoml.api(route="/predict")
        async def predict(self, text: str) -> Prediction:
            return self.classifier.predict([BatchText(text=text)], "predict")[0]

        @bentoml.api(
            route="/predict_batch", batchable=True, max_batch_size=256, max_latency_ms=MAX_LATENCY_MS
        )
        async def predict_batch(self, texts: list[BatchText]) -> list[Prediction]:
            return self.classifier.predict(texts, "predict_batch")

    else:

        @bentoml.api(route="/predict")
        def predict(self, text: str) -> Prediction:
            return self.classifier.predict([BatchText(text=text)], "predict")[0]

        @bentoml.api(
            route="/predict_batch", batchable=True, max_batch_size=256, max_latency_ms=MAX_LATENCY_MS
        )
        def predict_batch(self, texts: list[BatchText]) -> list[Prediction]:
            return self.classifier.predict(texts, "predict_batch")


Variant.add_asgi_middleware(
    RequestGuard, max_body_bytes=settings.max_body_bytes, max_batch_size=settings.max_batch_size
)
