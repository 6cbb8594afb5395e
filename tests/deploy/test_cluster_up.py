"""`make cluster-up` decides at run time whether to install metrics-server: only where no other component
serves the resource metrics API, and again (an upgrade) where the release is its own. Run here with
stand-ins for kubectl and helm that record their arguments and answer as a cluster would."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from support.paths import REPO

STAND_IN = """#!/bin/sh
echo "$(basename "$0") $*" >>"{log}"
case "$*" in
  *"get apiservice v1beta1.metrics.k8s.io"*) exit {apiservice} ;;
  *"status metrics-server"*) exit {release} ;;
esac
exit 0
"""


def cluster_up(tmp_path: Path, metrics_api_served: bool, ours: bool) -> list[str]:
    """The kubectl and helm commands `make cluster-up` runs against such a cluster (every other query
    succeeds: the Secrets exist, the installs work)."""
    log = tmp_path / "commands.log"
    for tool in ("kubectl", "helm"):
        path = tmp_path / tool
        path.write_text(
            STAND_IN.format(log=log, apiservice=0 if metrics_api_served else 1, release=0 if ours else 1)
        )
        path.chmod(0o755)
    result = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "cluster-up",
            f"KUBECTL={tmp_path / 'kubectl'}",
            f"HELM={tmp_path / 'helm'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return log.read_text().splitlines()


def installs_metrics_server(commands: list[str]) -> bool:
    return any(command.startswith("helm upgrade --install metrics-server ") for command in commands)


@pytest.mark.parametrize(
    "served, ours, installed",
    [
        (False, False, True),  # no metrics.k8s.io: install it
        (True, False, False),  # another component serves it (a managed cluster's, k3s'): leave it alone
        (True, True, True),  # ours from an earlier `make cluster-up`: upgrade it
    ],
)
def test_cluster_up_installs_metrics_server_only_where_the_metrics_api_is_missing_or_ours(
    tmp_path, served, ours, installed
):
    commands = cluster_up(tmp_path, served, ours)
    assert installs_metrics_server(commands) == installed, commands
    # The rest of the stack is installed either way.
    assert any(command.startswith("helm upgrade --install prometheus ") for command in commands), commands
