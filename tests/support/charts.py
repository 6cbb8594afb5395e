"""The Helm releases `make cluster-up` installs, and their renderings by the pinned helm, for the
deployment checks (tests/deploy) and the e2e stack (tests/e2e) alike."""

from __future__ import annotations

import shlex
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from support.paths import REPO, SHARED

# Charts shared/charts does not hold: tests/deploy/tools.sh packages them from their sources (chart ->
# the name it prints the path of).
PACKAGED_BY_TOOLS = {"metrics-server": "metrics-server-chart"}

# The Kubernetes version the manifests and renderings are checked against: API schemas, Pod Security policy
# version, and the version helm renders for.
KUBERNETES_VERSION = "1.35"


# Shell words that end one command of a line and start the next, and words that only open or close one.
SEPARATORS = {"&&", "||", ";", "|", "then", "else", "do"}
OPENERS = {"if", "!", "{", "}", "fi", "done"}


def make_dry_run(*targets: str, **variables: str) -> list[list[str]]:
    """The commands `make -n TARGET...` would run, each split into words: a line's chains (`&&`, `||`),
    lists (`;`), pipelines and `if` branches are separate commands."""
    args = ["make", "--no-print-directory", "-n", *targets, *(f"{k}={v}" for k, v in variables.items())]
    out = subprocess.run(args, cwd=REPO, capture_output=True, text=True, check=True).stdout
    commands = []
    for line in out.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        command: list[str] = []
        for word in [*lexer, ";"]:
            if word in SEPARATORS:
                commands.append(command)
                command = []
            elif command or word not in OPENERS:
                command.append(word)
    return [words for words in commands if words]


@dataclass(frozen=True)
class Release:
    """A Helm release as `make cluster-up` installs it (`settings`: its --set options, if any)."""

    name: str
    repo: str
    chart: str
    version: str
    namespace: str
    values_path: Path
    settings: tuple[str, ...] = ()

    @property
    def values(self) -> dict:
        return yaml.safe_load(self.values_path.read_text())

    @property
    def defaults(self) -> dict:
        return yaml.safe_load(self.chart_file("values.yaml"))

    @property
    def packaged_chart(self) -> Path:
        """The pinned chart packaged with its dependencies: what `helm install` gets from the repository.
        From shared/charts, or for the charts listed in PACKAGED_BY_TOOLS, from `make deploy-tools`."""
        if self.chart in PACKAGED_BY_TOOLS:
            out = run(["bash", REPO / "tests/deploy/tools.sh", "--print-path", PACKAGED_BY_TOOLS[self.chart]])
            path = Path(out.stdout.strip())
            assert path.is_file(), f"{path} is missing: run `make deploy-tools`"
            return path
        return SHARED / "charts" / self.chart / self.version / f"{self.chart}-{self.version}.tgz"

    def chart_file(self, name: str) -> str:
        """A file of the packaged chart, e.g. "Chart.yaml" or "values.yaml"."""
        with tarfile.open(self.packaged_chart) as archive:
            return archive.extractfile(f"{self.chart}/{name}").read().decode()

    def service_host(self, service: str | None = None) -> str:
        return f"{service or self.name}.{self.namespace}.svc.cluster.local"


def option(words: list[str], name: str) -> str:
    return words[words.index(name) + 1]


def cluster_releases(**variables: str) -> dict[str, Release]:
    """The releases `make cluster-up` installs, with make variables (e.g. LOG_AGENT="promtail")."""
    releases = {}
    for words in make_dry_run("cluster-up", **variables):
        if words[:3] == ["helm", "upgrade", "--install"]:
            repo, chart = words[4].split("/")
            settings = tuple(f"--set={words[i + 1]}" for i, word in enumerate(words) if word == "--set")
            releases[words[3]] = Release(
                words[3],
                repo,
                chart,
                option(words, "--version"),
                option(words, "--namespace"),
                REPO / option(words, "--values"),
                settings,
            )
    return releases


# The log agents `make cluster-up LOG_AGENT=...` chooses between; the first is the default.
LOG_AGENTS = ("opentelemetry-collector", "promtail")


def run(command: list, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, timeout=300, **kwargs
    )


def render(release: Release, helm: Path, *extra: str) -> list[dict]:
    """The objects `make cluster-up` installs for `release`: helm's rendering of the packaged chart
    with the release's name, namespace and values (`extra`: more helm options, e.g. --api-versions)."""
    rendered = run(
        [
            helm,
            "template",
            release.name,
            release.packaged_chart,
            "--namespace",
            release.namespace,
            "--values",
            release.values_path,
            *release.settings,
            "--kube-version",
            KUBERNETES_VERSION,
            *extra,
        ]
    )
    assert rendered.returncode == 0, f"helm template {release.name} failed:\n{rendered.stderr}"
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
