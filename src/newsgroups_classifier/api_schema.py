"""The OpenAPI schema the service publishes (/docs.json): BentoML's, with what the HTTP edge adds.

BentoML documents each API's 200 response and a fixed set of errors, and one request content type;
it offers no public way to add more. The edge serves this amended copy instead: the error responses
every API can give (`{"error": "...", "reason": "..."}`), and the raw text /predict also takes.
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


def with_errors(spec: dict) -> dict:
    spec.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path, codes in API_ERRORS.items():
        operation = spec["paths"][path]["post"]
        responses = {"200": operation["responses"]["200"]}
        for code in sorted(codes):
            responses[str(code)] = {"description": HTTPStatus(code).phrase, "content": error}
        operation["responses"] = responses
    spec["paths"]["/predict"]["post"]["requestBody"]["content"]["text/plain"] = {"schema": TEXT}
    return spec
