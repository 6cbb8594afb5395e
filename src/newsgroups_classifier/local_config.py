"""Renders the shipped BentoML configuration for a process on this machine (`make serve`, tests).

The ConfigMap in manifests/ is the one source: only the OTLP endpoint, protocol and sample rate are
changed for local runs, so what runs here is what runs in the cluster.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

CONFIGMAP = Path(__file__).resolve().parents[2] / "manifests" / "configmap.yaml"
BENTOML_CONFIG_KEY = "bentoml.yaml"


def shipped_bentoml_config(configmap: Path = CONFIGMAP) -> dict:
    for document in yaml.safe_load_all(configmap.read_text()):
        if document and BENTOML_CONFIG_KEY in document.get("data", {}):
            return yaml.safe_load(document["data"][BENTOML_CONFIG_KEY])
    raise ValueError(f"{configmap} has no ConfigMap with a {BENTOML_CONFIG_KEY} key")


def shipped_service_env(configmap: Path = CONFIGMAP) -> dict[str, str]:
    """The service settings the ConfigMap sets as environment variables."""
    for document in yaml.safe_load_all(configmap.read_text()):
        if document and document.get("data") and BENTOML_CONFIG_KEY not in document["data"]:
            return {key: str(value) for key, value in document["data"].items()}
    return {}


def local_bentoml_config(
    otlp_endpoint: str | None = None, protocol: str | None = None, sample_rate: float | None = None
) -> dict:
    config = shipped_bentoml_config()
    tracing = config["services"]["tracing"]
    if protocol:
        tracing["otlp"]["protocol"] = protocol
        tracing["otlp"].setdefault(protocol, {})
    if otlp_endpoint:
        tracing["otlp"]["endpoint"] = otlp_endpoint
    if sample_rate is not None:
        tracing["sample_rate"] = float(sample_rate)  # BentoML rejects an int here
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--otlp-endpoint", help="e.g. http://127.0.0.1:4317 (grpc) or http://127.0.0.1:4318/v1/traces"
    )
    parser.add_argument("--protocol", choices=("grpc", "http"))
    parser.add_argument("--sample-rate", type=float)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    config = local_bentoml_config(args.otlp_endpoint, args.protocol, args.sample_rate)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(yaml.safe_dump(config, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
