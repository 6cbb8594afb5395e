"""The service level objectives (helm-config/prometheus/slos.yaml) and the rules the pinned Sloth generates
from them (serverFiles' slo_rules.yml of helm-config/prometheus/values.yaml, written by `make slo-rules`):
the committed rules are exactly what Sloth makes of the spec, every burn-rate threshold is one an error
ratio can reach, and promtool unit tests with synthetic traffic show the alerts behave as the SRE
workbook's multi-window, multi-burn-rate alerts should: a fast burn pages within minutes, a slow burn
opens a ticket (and pages no one), and an error rate the budget affords fires nothing."""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass

import pytest
import yaml

from support.charts import run
from support.deploy_files import HELM_CONFIG, prometheus_rule_files
from support.processes import built_tool

SPEC = HELM_CONFIG / "prometheus" / "slos.yaml"
NAMESPACE = "newsgroups"
PODS = ("newsgroups-classifier-a", "newsgroups-classifier-b")
DAY = 24 * 60  # minutes


@pytest.fixture(scope="module")
def sloth():
    return built_tool("tests/deploy/tools.sh", "sloth", "make deploy-tools")


def spec() -> dict:
    return yaml.safe_load(SPEC.read_text())


def generate(sloth, path) -> dict:
    """Sloth's rules for the spec at `path`, as YAML."""
    result = run([sloth, "generate", "--no-log", "--input", path])
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_the_spec_is_valid(sloth):
    result = run([sloth, "validate", "--no-log", "--input", SPEC])
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_committed_slo_rules_are_what_the_pinned_sloth_generates_from_the_spec(sloth):
    assert generate(sloth, SPEC) == prometheus_rule_files()["slo_rules.yml"], "run `make slo-rules`"


def test_a_changed_objective_changes_the_rules(sloth, tmp_path):
    changed = spec()
    changed["slos"][0]["objective"] = 99.9
    path = tmp_path / "slos.yaml"
    path.write_text(yaml.safe_dump(changed))
    assert generate(sloth, path) != prometheus_rule_files()["slo_rules.yml"]


# --- thresholds a ratio can reach --------------------------------------------------------------------

THRESHOLD = re.compile(r"> \(([\d.]+) \* ([\d.]+)\)")


def unreachable_thresholds(rules: dict) -> list[str]:
    """Burn-rate thresholds (factor x error budget) of 1 or more: an error ratio never exceeds them."""
    return [
        f"{rule['alert']} ({rule['labels']['severity']}): {factor} x {budget}"
        for group in rules["groups"]
        for rule in group["rules"]
        if "alert" in rule
        for factor, budget in THRESHOLD.findall(rule["expr"])
        if float(factor) * float(budget) >= 1
    ]


def test_every_burn_rate_threshold_is_one_an_error_ratio_can_reach():
    rules = prometheus_rule_files()["slo_rules.yml"]
    alerts = [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]
    assert len(alerts) == 2 * len(spec()["slos"])  # a page and a ticket alert per SLO
    assert all(len(THRESHOLD.findall(rule["expr"])) == 4 for rule in alerts)
    assert not unreachable_thresholds(rules)


def test_a_90_percent_objective_could_never_page(sloth, tmp_path):
    """The check above catches what the workbook's factors do to a loose objective: 14.4 x 10% > 1."""
    loose = spec()
    loose["slos"][0]["objective"] = 90
    path = tmp_path / "slos.yaml"
    path.write_text(yaml.safe_dump(loose))
    assert any("14.4 x 0.1" in found for found in unreachable_thresholds(generate(sloth, path)))


# --- promtool unit tests: how the alerts behave --------------------------------------------------------


@dataclass(frozen=True)
class Objective:
    """One SLO of the spec: its name, error budget, alert, and how a request counts against it."""

    name: str
    budget: float
    alert: str
    service: str
    route: str | None  # a latency SLO's route; None: the availability SLO
    threshold: str | None  # a latency SLO's `le`, as the spec selects it

    @classmethod
    def all(cls) -> list[Objective]:
        found = []
        for slo in spec()["slos"]:
            error = slo["sli"]["events"]["error_query"]
            route = re.search(r'route="([^"]+)"', error)
            le = re.search(r'le="([^"]+)"', error)
            found.append(
                cls(
                    slo["name"],
                    round(1 - slo["objective"] / 100, 10),
                    slo["alerting"]["name"],
                    spec()["service"],
                    route and route.group(1),
                    le and le.group(1),
                )
            )
        return found

    def labels(self, severity: str) -> dict:
        """The labels of its alert: the SLI's (namespace), Sloth's ids, and the severity."""
        return {
            "namespace": NAMESPACE,
            "sloth_id": f"{self.service}-{self.name}",
            "sloth_service": self.service,
            "sloth_slo": self.name,
            "severity": severity,
            "sloth_severity": severity,
        }


def piecewise(phases: list[tuple[float, int]]) -> str:
    """A counter in promtool's notation growing by `per_minute` for `minutes`, phase after phase."""
    value, parts = 0.0, []
    for i, (per_minute, minutes) in enumerate(phases):
        start = value if i == 0 else value + per_minute
        steps = minutes if i == 0 else minutes - 1
        parts.append(f"{start:.10g}+{per_minute:.10g}x{steps}")
        value = start + per_minute * steps
    return " ".join(parts)


# Requests per minute per pod (every scenario's share of bad requests makes whole numbers of them), and
# how long a slow one takes (over both latency thresholds).
RATE = 10_000
FAST, SLOW = 0.01, 2.0


def traffic(objective: Objective, phases: list[tuple[float, int]], stored_series) -> list[dict]:
    """Series of `RATE` requests a minute on each pod, phase after phase: (share of bad requests, or
    None for no request at all, minutes). Bad: a 500 for availability, a request taking SLOW seconds for
    latency."""

    def counter(name: str, labels: dict, per_request) -> dict:
        """A counter of the requests `per_request(bad share)` counts, phase after phase."""
        rates = [(0 if bad is None else exact(RATE * per_request(bad)), minutes) for bad, minutes in phases]
        return {"series": f"{name}{braces(labels)}", "values": piecewise(rates)}

    series = []
    for pod in PODS:
        labels = {"namespace": NAMESPACE, "pod": pod}
        if objective.route is None:
            name = "newsgroups_http_requests_total"
            labels = {**labels, "route": "/predict", "method": "POST"}
            series.append(counter(name, {**labels, "code": "200"}, lambda bad: 1 - bad))
            series.append(counter(name, {**labels, "code": "500"}, lambda bad: bad))
            continue
        name = "newsgroups_http_request_duration_seconds"
        labels = {**labels, "route": objective.route}
        les = {s["le"] for s in stored_series if s["__name__"] == f"{name}_bucket"}
        assert objective.threshold in les, f"{objective.threshold} is not a bucket: {sorted(les)}"
        for le in les:

            def within(bad, le=float(le)):  # the share of requests the bucket counts
                return (1 - bad) * (FAST <= le) + bad * (SLOW <= le)

            series.append(counter(f"{name}_bucket", {**labels, "le": le}, within))
        series.append(counter(f"{name}_count", labels, lambda bad: 1))
    return series


def exact(count: float) -> int:
    """A whole number of requests a minute: promtool adds them up exactly, so a counter never seems to
    go down (which rate() would take for a restart) where one phase follows another."""
    assert abs(count - round(count)) < 1e-6, count
    return round(count)


def braces(labels: dict) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def alerts_at(objective: Objective, minute: int, severities: list[str]) -> dict:
    return {
        "eval_time": f"{minute}m",
        "alertname": objective.alert,
        "exp_alerts": [{"exp_labels": objective.labels(severity)} for severity in severities],
    }


def scenario(objective: Objective, name: str) -> tuple[list[tuple[float, int]], list[dict]]:
    """(phases of traffic, expected alerts at given minutes) of each scenario, in units of the budget."""
    budget = objective.budget
    if name == "a total outage pages within minutes":
        # A day of good traffic, then every request bad: the 5 m ratio is 1 at once, the 1 h ratio k/60
        # after k minutes, above 14.4 x budget once k > 864 x budget (5 minutes for a 0.5% budget, 9 for
        # 1%). Nothing fires the minute before; a minute after, the page (the ticket's 3 d window, holding
        # the day, passes its threshold a few minutes later: Alertmanager inhibits it under the page).
        minutes = math.floor(60 * 14.4 * budget) + 1
        return [(0, DAY), (1, 30)], [
            alerts_at(objective, DAY + minutes - 1, []),
            alerts_at(objective, DAY + minutes + 1, ["page"]),
        ]
    if name == "a slow burn opens a ticket and pages no one":
        # Six hours of good traffic, then bad requests at 4 x budget: below both page factors (14.4, 6).
        # The ticket comes once the 6 h and 3 d windows (holding all the traffic so far) pass 1 x budget:
        # after 2 h (4t / (6 h + t) > 1); nothing an hour in.
        return [(0, 6 * 60), (4 * budget, 4 * 60)], [
            alerts_at(objective, 6 * 60 + 60, []),
            alerts_at(objective, 6 * 60 + 3 * 60, ["ticket"]),
            alerts_at(objective, 6 * 60 + 4 * 60 - 1, ["ticket"]),
        ]
    assert name == "an error rate the budget affords fires nothing"
    # 90% of the budget, all day: it would last the 30 days. Every window sees the same ratio.
    return [(0.9 * budget, DAY)], [alerts_at(objective, minute, []) for minute in (60, 6 * 60, DAY - 1)]


SCENARIOS = (
    "a total outage pages within minutes",
    "a slow burn opens a ticket and pages no one",
    "an error rate the budget affords fires nothing",
)


def rules_of(objective: Objective, directory) -> str:
    """The generated rule groups of one SLO (Sloth names them after its id), without annotations."""
    rules = copy.deepcopy(prometheus_rule_files()["slo_rules.yml"])
    sloth_id = objective.labels("")["sloth_id"]
    rules["groups"] = [group for group in rules["groups"] if group["name"].endswith(f"-{sloth_id}")]
    assert len(rules["groups"]) == 3, "SLI recordings, meta recordings, alerts"
    for rule in (rule for group in rules["groups"] for rule in group["rules"]):
        rule.pop("annotations", None)
    (directory / "slo_rules.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
    return "slo_rules.yml"


def promtool_test(promtool, objective, phases, expected, stored_series, tmp_path, values=()):
    """Promtool's unit test of the SLO's rules on its traffic: `expected` alerts, and `values` of
    expressions, (PromQL, minute, value) each."""
    tests = {
        "rule_files": [rules_of(objective, tmp_path)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": traffic(objective, phases, stored_series),
                "alert_rule_test": expected,
                "promql_expr_test": [
                    {
                        "expr": f"sum(abs({expr} - {value:.17g}) < bool 1e-9)",
                        "eval_time": f"{minute}m",
                        "exp_samples": [{"labels": "{}", "value": 1}],
                    }
                    for expr, minute, value in values
                ],
            }
        ],
    }
    (tmp_path / "test.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    return run([promtool, "test", "rules", tmp_path / "test.yml"])


@pytest.mark.parametrize("objective", Objective.all(), ids=lambda o: o.name)
@pytest.mark.parametrize("name", SCENARIOS)
def test_slo_alert(objective, name, promtool, stored_series, tmp_path):
    phases, expected = scenario(objective, name)
    result = promtool_test(promtool, objective, phases, expected, stored_series, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_scenario_that_expects_the_wrong_severity_fails(promtool, stored_series, tmp_path):
    """The promtool tests above can fail: the total outage does not open a ticket instead of paging."""
    (objective, *_) = Objective.all()
    phases, expected = scenario(objective, SCENARIOS[0])
    wrong = copy.deepcopy(expected)
    wrong[-1]["exp_alerts"] = [{"exp_labels": objective.labels("ticket")}]
    assert promtool_test(promtool, objective, phases, wrong, stored_series, tmp_path).returncode != 0


@pytest.mark.parametrize("objective", Objective.all(), ids=lambda o: o.name)
def test_the_budget_left_counts_the_windows_with_traffic_only(objective, promtool, stored_series, tmp_path):
    """Six hours spending 90% of the budget's rate, then two quiet hours: 10% of the budget is left, a
    number (not NaN: a quiet window has no ratio, rather than 0/0); the burn rate has no value while
    nothing is served."""
    phases = [(0.9 * objective.budget, 6 * 60), (None, 2 * 60)]
    selector = f'{{sloth_slo="{objective.name}"}}'
    values = [
        (f"slo:current_burn_rate:ratio{selector}", 6 * 60, 0.9),
        (f"slo:period_error_budget_remaining:ratio{selector}", 6 * 60, 0.1),
        (f"slo:period_error_budget_remaining:ratio{selector}", 8 * 60, 0.1),
    ]
    quiet = {"expr": f"slo:current_burn_rate:ratio{selector}", "eval_time": f"{8 * 60}m", "exp_samples": []}
    result = promtool_test(promtool, objective, phases, [], stored_series, tmp_path, values)
    assert result.returncode == 0, result.stdout + result.stderr
    tests = yaml.safe_load((tmp_path / "test.yml").read_text())
    tests["tests"][0]["promql_expr_test"].append(quiet)
    (tmp_path / "test.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    result = run([promtool, "test", "rules", tmp_path / "test.yml"])
    assert result.returncode == 0, result.stdout + result.stderr
