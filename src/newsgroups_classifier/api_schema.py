"""The OpenAPI schema the service publishes (/docs.json): BentoML's, with what the HTTP edge adds.

BentoML documents each API's 200 response and a fixed set of errors, and one request content type;
it offers no public way to add more. The edge serves this amended copy instead: the error responses
every API can give (`{"error": "...", "reason": "..."}`), the raw text /predict also takes, the limits
the edge enforces (a body is required, texts are not blank, a batch has 1 to MAX_BATCH_SIZE texts,
feedback names one of the model's labels and a prediction id of the form the service issues), the
feedback answer, and links from each prediction to its feedback.
"""

from __future__ import annotations

from http import HTTPStatus

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error", "reason"],
    "properties": {
        "error": {"type": "string", "description": "what is wrong, for people"},
        "reason": {"type": "string", "description": "what is wrong, for programs (the metrics' label)"},
    },
}
# 408: the body was not sent in time; 413: body or batch over its limit; 415: content type; 422: a field
# missing or of the wrong type; 503: the adaptive batcher is overloaded (retry later).
COMMON_ERRORS = (400, 408, 413, 415, 422, 503)
API_ERRORS = {
    "/predict": COMMON_ERRORS,
    "/predict_batch": COMMON_ERRORS,
    # 404: a prediction id this service did not issue; 409: feedback already given; 410: expired.
    "/feedback": (*COMMON_ERRORS, 404, 409, 410),
}
TEXT = {"type": "string", "minLength": 1, "pattern": r"\S", "description": "the text to classify"}
# What feedback.PredictionIdSigner issues: base64url payload, a dot, base64url signature.
PREDICTION_ID = {
    "type": "string",
    "pattern": r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$",
    "maxLength": 512,
    "description": "the prediction_id of a prediction's answer",
}
FEEDBACK_ANSWER = {
    "type": "object",
    "required": ["status", "correct"],
    "properties": {
        "status": {"type": "string", "enum": ["recorded"]},
        "correct": {"type": "boolean", "description": "whether the prediction had this label"},
    },
}


def amended(spec: dict, max_batch_size: int, labels: list[str]) -> dict:
    """BentoML's schema `spec` with what the edge adds (see the module's docstring)."""
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = ERROR_SCHEMA
    schemas["BatchText"] = TEXT
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    operations = {path: spec["paths"][path]["post"] for path in API_ERRORS}
    for path, operation in operations.items():
        responses = {"200": operation["responses"]["200"]}
        for code in sorted(API_ERRORS[path]):
            responses[str(code)] = {"description": HTTPStatus(code).phrase, "content": error}
        operation["responses"] = responses
        operation["requestBody"]["required"] = True
    operations["/predict"]["requestBody"]["content"]["text/plain"] = {"schema": TEXT}
    for fields in _input_fields(spec, operations["/predict_batch"]):
        fields["texts"].update(minItems=1, maxItems=max_batch_size)
    for fields in _input_fields(spec, operations["/feedback"]):
        fields["prediction_id"].update(PREDICTION_ID)
        fields["label"].update(enum=list(labels), description="the true label: one of the model's labels")
    operations["/feedback"]["responses"]["200"]["content"]["application/json"]["schema"] = FEEDBACK_ANSWER
    feedback = operations["/feedback"]["operationId"]
    _link(operations["/predict"], feedback, "$response.body#/")
    _link(operations["/predict_batch"], feedback, "$response.body#/0/")  # the first text's prediction
    return spec


def _input_fields(spec: dict, operation: dict) -> list[dict]:
    """The properties of an API's JSON input: in the operation, and in its copy among the components."""
    inline = operation["requestBody"]["content"]["application/json"]["schema"]
    component = spec["components"]["schemas"].get(f"{operation['x-bentoml-name']}__Input")
    return [schema["properties"] for schema in (inline, component) if schema]


def _link(operation: dict, feedback: str, prediction: str) -> None:
    """An OpenAPI link: the feedback on a prediction takes its prediction_id (and, here, its label)."""
    body = {"prediction_id": f"{prediction}prediction_id", "label": f"{prediction}label"}
    operation["responses"]["200"]["links"] = {"Feedback": {"operationId": feedback, "requestBody": body}}
