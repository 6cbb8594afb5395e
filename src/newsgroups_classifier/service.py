"""The BentoML service: the classifier's HTTP API."""

from __future__ import annotations

from typing import Annotated

import bentoml
from bentoml.validators import ContentType
from starlette.responses import JSONResponse

from .classifier import BatchText, Classifier, FeedbackUnavailable, Prediction, resolve_model
from .config import Settings
from .feedback import FeedbackError
from .guard import RequestGuard
from .metrics import count_rejection
from .tracing import export_resource_attributes

JSON = "application/json"
settings = Settings()
STORED_MODEL = resolve_model(settings.model_tag)
export_resource_attributes(settings, STORED_MODEL.tag.version)  # before BentoML builds its tracer


@bentoml.service(name="newsgroups-classifier", workers=settings.workers)  # traffic: the ConfigMap
class NewsgroupsClassifier:
    model_ref = bentoml.models.BentoModel(str(STORED_MODEL.tag))  # `bentoml build` packages this model

    def __init__(self) -> None:
        self.classifier = Classifier(self.model_ref, settings)

    @bentoml.on_shutdown
    def flush_telemetry(self) -> None:
        self.classifier.flush_telemetry()

    # async: the model call (a few ms of CPU) runs on the event loop, without a hand-off to a thread
    # and back (more predictions per CPU-second: docs/benchmarks.md).
    @bentoml.api(route="/predict")
    async def predict(self, text: str) -> Prediction:
        return self.classifier.predict([BatchText(text=text)], "predict")[0]

    # sync (in BentoML's thread): the event loop gathers the next batch while one is predicted. The
    # content type said once: else BentoML derives it from the list's JSON schema per response.
    @bentoml.api(route="/predict_batch", batchable=True, max_batch_size=256, max_latency_ms=1000)
    def predict_batch(self, texts: list[BatchText]) -> Annotated[list[Prediction], ContentType(JSON)]:
        return self.classifier.predict(texts, "predict_batch")

    @bentoml.api(route="/feedback")  # sync: SQLite and a stdout write that may wait, off the event loop
    def feedback(self, prediction_id: str, label: str) -> dict:
        try:
            correct = self.classifier.feedback(prediction_id, label)
        except FeedbackError as error:
            count_rejection("feedback", error.reason)
            return JSONResponse({"error": str(error), "reason": error.reason}, status_code=error.status)
        except FeedbackUnavailable as error:
            return JSONResponse({"error": f"{error}: retry later", "reason": "unavailable"}, status_code=503)
        return {"status": "recorded", "correct": correct}


# Input checks before BentoML parses a request: every bad request gets a clear 4xx, counted.
NewsgroupsClassifier.add_asgi_middleware(
    RequestGuard, max_body_bytes=settings.max_body_bytes, max_batch_size=settings.max_batch_size
)
