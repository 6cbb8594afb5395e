"""The shipped configuration, for a process on this machine (`make serve`, tests, the benchmark).

The ConfigMaps in manifests/ are the one source: BentoML's configuration file as it is, and the
service's environment with only where spans go (OTLP endpoint and protocol) and how many (sampling)
changed, so what runs here is what runs in the cluster.
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
    """The environment variables the ConfigMap sets for the service."""
    for document in yaml.safe_load_all(configmap.read_text()):
        if document and document.get("data") and BENTOML_CONFIG_KEY not in document["data"]:
            return {key: str(value) for key, value in document["data"].items()}
    return {}


def local_service_env(
    otlp_endpoint: str | None = None, protocol: str | None = None, sample_rate: float | None = None
) -> dict[str, str]:
    """The shipped environment, with spans sent to `otlp_endpoint` (a base URL: the HTTP exporter adds
    /v1/traces) over `protocol` (grpc or http/protobuf), `sample_rate` of them (parent-based)."""
    env = shipped_service_env()
    if otlp_endpoint:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp_endpoint
    if protocol:
        env["OTEL_EXPORTER_OTLP_PROTOCOL"] = protocol
    if sample_rate is not None:
        env["OTEL_TRACES_SAMPLER_ARG"] = str(float(sample_rate))
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--otlp-endpoint", help="e.g. http://127.0.0.1:4317 (grpc) or :4318 (http/protobuf)")
    parser.add_argument("--protocol", choices=("grpc", "http/protobuf"))
    parser.add_argument("--sample-rate", type=float)
    parser.add_argument("--bentoml-config", type=Path, required=True, help="where to write BentoML's file")
    parser.add_argument("--env", type=Path, required=True, help="where to write the environment (KEY=value)")
    args = parser.parse_args(argv)
    args.bentoml_config.parent.mkdir(parents=True, exist_ok=True)
    args.bentoml_config.write_text(yaml.safe_dump(shipped_bentoml_config(), sort_keys=False))
    env = local_service_env(args.otlp_endpoint, args.protocol, args.sample_rate)
    args.env.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
