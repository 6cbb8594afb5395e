"""Schemathesis hooks (loaded by schemathesis.toml): the service's own check, beside schemathesis' checks."""

from __future__ import annotations

import schemathesis

from newsgroups_classifier import http_edge, metrics

REASONS = {*metrics.REJECTION_REASONS, *http_edge.REASONS.values(), "error"}


@schemathesis.check
def error_shape(ctx, response, case) -> None:
    """Every 4xx is `{"error": "...", "reason": "..."}` with one of the service's reasons."""
    if 400 <= response.status_code < 500:
        body = response.json()
        assert isinstance(body, dict) and isinstance(body.get("error"), str), f"not our error shape: {body}"
        assert body.get("reason") in REASONS, f"not one of the service's reasons: {body.get('reason')!r}"
