"""Which requests get a server span: the API's, by the service's own instrumentation; BentoML's is off.

A span is named after its request's path and the collector makes a metric series of each span name:
the traced paths must be a fixed set, whatever paths clients send.
"""

from __future__ import annotations

import pytest
from opentelemetry.util.http import ExcludeList, parse_excluded_urls

from newsgroups_classifier.local_config import shipped_bentoml_config
from newsgroups_classifier.tracing import API_ROUTES, NOT_THE_API

OTHER_PATHS = ["/livez", "/readyz", "/healthz", "/metrics", "/docs.json", "/", "/predict/", "/predict/x"]


@pytest.mark.parametrize("path", API_ROUTES)
def test_the_api_is_traced(path):
    assert not parse_excluded_urls(NOT_THE_API).url_disabled(f"http://127.0.0.1:3000{path}")


@pytest.mark.parametrize("path", OTHER_PATHS)
def test_nothing_else_is_traced(path):
    assert parse_excluded_urls(NOT_THE_API).url_disabled(f"http://127.0.0.1:3000{path}")


def test_a_host_header_cannot_make_a_path_traced():
    # The URL the instrumentation matches is scheme://<Host header><path>.
    assert parse_excluded_urls(NOT_THE_API).url_disabled("http://a/predict/feedback")
    assert parse_excluded_urls(NOT_THE_API).url_disabled("http://a/b/predict")


@pytest.mark.parametrize("path", [*API_ROUTES, *OTHER_PATHS])
def test_bentoml_makes_no_server_span(path):
    excluded = shipped_bentoml_config()["services"]["tracing"]["excluded_urls"]
    assert ExcludeList(excluded).url_disabled(f"http://127.0.0.1:3000{path}")
