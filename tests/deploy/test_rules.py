"""The Prometheus rules shipped in helm-config/prometheus/values.yaml (serverFiles): promtool check, and
promtool unit tests with synthetic series for every alert firing and not firing.

The series of the model use the real model's classes, baseline and bucket edges, with `le` spelled exactly
as Prometheus 3 stores it after scraping the running service (see the `stored_series` fixture), so the joins
on `le` are tested as they run in production. Expected drift statistics are computed here independently
(formulas of shared/notes/ml-monitoring.md) and compared with the recording rules' results.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import pytest
import yaml

from support.charts import run
from support.deploy_files import prometheus_rule_files, rules, write_rule_files

MODEL_NAME = "newsgroups_classifier"
PODS = (
    {"namespace": "newsgroups", "pod": "newsgroups-classifier-a", "instance": "10.0.0.1:3000"},
    {"namespace": "newsgroups", "pod": "newsgroups-classifier-b", "instance": "10.0.0.2:3000"},
)
TARGET = {
    "namespace": "newsgroups",
    "app_kubernetes_io_name": "newsgroups-classifier",
    "job": "kubernetes-pods",
}
CLAMP = 1e-4
MINUTES = 120  # series length; drift alerts are evaluated at the end (1 h windows, `for` up to 15 m)
FEEDBACK_MINUTES = 420  # 6 h windows and `for: 30m`


def test_rules_pass_promtool_check(promtool, tmp_path):
    result = run([promtool, "check", "rules", *write_rule_files(tmp_path)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(prometheus_rule_files())


# --- synthetic series --------------------------------------------------------------------------------


def selector(name: str, labels: dict) -> str:
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def counter(per_minute: float, minutes: int = MINUTES) -> str:
    return f"0+{per_minute:.10g}x{minutes}"


def constant(value: float, minutes: int = MINUTES) -> str:
    return f"{value:.17g}+0x{minutes}"


@dataclass
class Scenario:
    """One promtool test group: input series, the alerts expected at `eval_time`, values of rules."""

    alert: str
    fires: bool
    minutes: int = MINUTES
    series: list = field(default_factory=list)
    expected_labels: dict = field(default_factory=dict)
    checks: list = field(default_factory=list)  # (PromQL, expected value)

    def add(self, name: str, labels: dict, values: str) -> None:
        self.series.append({"series": selector(name, labels), "values": values})

    def per_pod(self, name: str, labels: dict, per_minute: float) -> None:
        """A counter split evenly over the two pods."""
        for pod in PODS:
            self.add(name, {**labels, **pod}, counter(per_minute / len(PODS), self.minutes))

    def group(self) -> dict:
        eval_time = f"{self.minutes}m"
        alerts = (
            [{"exp_labels": {**self.expected_labels, "severity": severity(self.alert)}}] if self.fires else []
        )
        return {
            "name": f"{self.alert} {'fires' if self.fires else 'stays quiet'}",
            "interval": "1m",
            "input_series": self.series,
            "alert_rule_test": [{"eval_time": eval_time, "alertname": self.alert, "exp_alerts": alerts}],
            "promql_expr_test": [
                {
                    "expr": f"abs({expr} - {value:.17g}) < bool 1e-9",
                    "eval_time": eval_time,
                    "exp_samples": [{"labels": selector("", labels), "value": 1}],
                }
                for expr, value, labels in self.checks
            ],
        }


def severity(alert: str) -> str:
    return next(rule["labels"]["severity"] for rule in rules() if rule.get("alert") == alert)


@dataclass(frozen=True)
class Model:
    version: str
    baseline: dict
    # signal -> [(le as stored for the histogram, le as stored for the baseline gauge, edge, baseline cdf)]
    edges: dict

    @property
    def classes(self) -> list[str]:
        return sorted(self.baseline["class_share"])

    @property
    def labels(self) -> dict[str, str]:
        """What the model's statistics and alerts are kept apart by: its namespace and version."""
        return {"namespace": PODS[0]["namespace"], "model_version": self.version}


HISTOGRAMS = {
    "confidence": "newsgroups_prediction_confidence",
    "entropy": "newsgroups_prediction_entropy",
    "token_count": "newsgroups_input_tokens",
    "oov_ratio": "newsgroups_input_oov_ratio",
}


@pytest.fixture(scope="module")
def model(models_home, traffic, stored_series) -> Model:
    baseline = json.loads(
        (models_home / "models" / MODEL_NAME / traffic.model_version / "baseline.json").read_text()
    )
    edges = {}
    for signal, histogram in HISTOGRAMS.items():
        buckets = {float(s["le"]): s["le"] for s in stored_series if s["__name__"] == f"{histogram}_bucket"}
        gauges = {
            float(s["le"]): s["le"]
            for s in stored_series
            if s["__name__"] == "newsgroups_baseline_cdf" and s["signal"] == signal
        }
        # The join on `le` needs both spelled alike, as stored.
        assert buckets == gauges, (
            f"{signal}: histogram le {sorted(buckets.values())} != baseline {sorted(gauges.values())}"
        )
        cdf = dict(
            zip(baseline["histograms"][signal]["edges"], baseline["histograms"][signal]["cdf"], strict=True)
        )
        cdf[math.inf] = 1.0
        assert set(buckets) == set(cdf)
        edges[signal] = [(buckets[edge], gauges[edge], edge, cdf[edge]) for edge in sorted(buckets)]
    return Model(traffic.model_version, baseline, edges)


def model_series(
    scenario: Scenario, model: Model, class_rates: dict[str, float], confidence_cdf=None
) -> None:
    """Baseline gauges on both pods, predictions per class and the signal histograms.

    `confidence_cdf` maps each confidence edge to the live share at or below it (default: the baseline).
    """
    mv = model.labels
    for pod in PODS:
        scenario.add(
            "newsgroups_model_info", {**mv, "model_name": MODEL_NAME, **pod}, constant(1, scenario.minutes)
        )
        scenario.add(
            "newsgroups_baseline_samples",
            {**mv, **pod},
            constant(model.baseline["samples"], scenario.minutes),
        )
        scenario.add(
            "newsgroups_baseline_empty_share",
            {**mv, **pod},
            constant(model.baseline["empty_share"], scenario.minutes),
        )
        for label, share in model.baseline["class_share"].items():
            scenario.add(
                "newsgroups_baseline_class_share",
                {**mv, "label": label, **pod},
                constant(share, scenario.minutes),
            )
        for signal, rows in model.edges.items():
            for _, gauge_le, _, cdf in rows:
                scenario.add(
                    "newsgroups_baseline_cdf",
                    {**mv, "signal": signal, "le": gauge_le, **pod},
                    constant(cdf, scenario.minutes),
                )
    total = sum(class_rates.values())
    for label, rate in class_rates.items():
        scenario.per_pod("newsgroups_predictions_total", {**mv, "label": label}, rate)
    scenario.per_pod("newsgroups_empty_inputs_total", mv, 0)
    for signal, rows in model.edges.items():
        live = confidence_cdf if signal == "confidence" and confidence_cdf else {e: c for _, _, e, c in rows}
        for bucket_le, _, edge, _ in rows:
            scenario.per_pod(f"{HISTOGRAMS[signal]}_bucket", {**mv, "le": bucket_le}, total * live[edge])
        scenario.per_pod(f"{HISTOGRAMS[signal]}_count", mv, total)
        scenario.per_pod(f"{HISTOGRAMS[signal]}_sum", mv, total * 0.9)


def psi(live: dict[str, float], baseline: dict[str, float]) -> float:
    total = sum(live.values())
    shares = {k: max(v / total, CLAMP) for k, v in live.items()}
    return sum((shares[k] - max(q, CLAMP)) * math.log(shares[k] / max(q, CLAMP)) for k, q in baseline.items())


def chi2_999(dof: int) -> float:
    """Wilson-Hilferty approximation of the chi-square 0.999 quantile, as the rule computes it."""
    return dof * (1 - 2 / (9 * dof) + 3.090232 * math.sqrt(2 / (9 * dof))) ** 3


def test_chi2_approximation_is_close_to_the_table():
    assert chi2_999(3) == pytest.approx(16.27, rel=0.02)  # k = 4 classes (shared/notes/ml-monitoring.md)
    assert chi2_999(19) == pytest.approx(43.82, rel=0.02)  # all 20 newsgroups


def class_drift(model: Model, fires: bool, skew: float, per_minute: float) -> Scenario:
    scenario = Scenario("NewsgroupsClassDrift", fires, expected_labels=model.labels)
    first, *others = model.classes
    shares = (
        {first: skew, **{label: (1 - skew) / len(others) for label in others}}
        if skew
        else model.baseline["class_share"]
    )
    rates = {label: per_minute * share for label, share in shares.items()}
    model_series(scenario, model, rates)
    mv = model.labels
    scenario.checks += [
        ("newsgroups:class_psi:1h", psi(rates, model.baseline["class_share"]), mv),
        ("newsgroups:predictions:increase1h", per_minute * 60, mv),
        ("newsgroups:class_psi_critical:1h", chi2_999(len(model.classes) - 1) / (per_minute * 60), mv),
    ]
    return scenario


def confidence_drift(model: Model, fires: bool, shift: bool, per_minute: float) -> Scenario:
    scenario = Scenario(
        "NewsgroupsConfidenceDrift",
        fires,
        expected_labels={**model.labels, "signal": "confidence"},
    )
    rows = model.edges["confidence"]
    baseline = {edge: cdf for _, _, edge, cdf in rows}
    # shifted: every prediction at or below the second edge, i.e. far less confident than in training
    live = {edge: (1.0 if i >= 1 else 0.5) for i, (_, _, edge, _) in enumerate(rows)} if shift else baseline
    shares = model.baseline["class_share"]
    model_series(scenario, model, {label: per_minute * share for label, share in shares.items()}, live)
    ks = max(abs(live[edge] - baseline[edge]) for edge in baseline)
    scenario.checks.append(
        (
            'newsgroups:signal_ks:1h{signal="confidence"}',
            ks,
            {**model.labels, "signal": "confidence"},
        )
    )
    for signal in ("entropy", "token_count", "oov_ratio"):  # unchanged signals: every edge joined, KS 0
        scenario.checks.append(
            (
                f'newsgroups:signal_ks:1h{{signal="{signal}"}}',
                0.0,
                {**model.labels, "signal": signal},
            )
        )
    return scenario


def empty_inputs(model: Model, fires: bool, empty_per_minute: float) -> Scenario:
    scenario = Scenario("NewsgroupsEmptyInputShareHigh", fires, expected_labels=model.labels)
    rates = {label: 12 * share for label, share in model.baseline["class_share"].items()}
    model_series(scenario, model, rates)
    mv = model.labels
    scenario.series = [
        s for s in scenario.series if not s["series"].startswith("newsgroups_empty_inputs_total")
    ]
    scenario.per_pod("newsgroups_empty_inputs_total", mv, empty_per_minute)
    scenario.checks.append(("newsgroups:empty_share:ratio1h", empty_per_minute / 12, mv))
    return scenario


def live_accuracy(model: Model, fires: bool, correct: float, wrong: float) -> Scenario:
    """Feedback per minute: `correct` on the diagonal, `wrong` off it; mean confidence 0.95."""
    scenario = Scenario(
        "NewsgroupsLiveAccuracyLow",
        fires,
        minutes=FEEDBACK_MINUTES,
        expected_labels=model.labels,
    )
    mv = model.labels
    classes = model.classes
    for predicted in classes:
        for true in classes:
            rate = (
                correct / len(classes) if predicted == true else wrong / (len(classes) * (len(classes) - 1))
            )
            scenario.per_pod(
                "newsgroups_feedback_total", {**mv, "predicted_label": predicted, "true_label": true}, rate
            )
    scenario.per_pod("newsgroups_prediction_confidence_count", mv, 10)
    scenario.per_pod("newsgroups_prediction_confidence_sum", mv, 9.5)
    scenario.checks += [
        ("newsgroups:feedback_accuracy:ratio6h", correct / (correct + wrong), mv),
        ("newsgroups:confidence_mean:6h", 0.95, mv),
    ]
    return scenario


def feedback_errors(fires: bool, ok: float, failed: float, others_failing: float = 0) -> Scenario:
    """Feedback answered 200 or 503 (per minute), and failing predictions and probes (others_failing)."""
    scenario = Scenario(
        "NewsgroupsFeedbackErrors", fires, minutes=60, expected_labels={"namespace": PODS[0]["namespace"]}
    )
    for route, method, code, rate in (
        ("/feedback", "POST", "200", ok),
        ("/feedback", "POST", "503", failed),
        ("/predict", "POST", "500", others_failing),
        ("/readyz", "GET", "500", others_failing),
    ):
        labels = {"route": route, "method": method, "code": code}
        scenario.per_pod("newsgroups_http_requests_total", labels, rate)
    return scenario


def target(alert: str, fires: bool, up: int | None) -> Scenario:
    if alert == "NewsgroupsClassifierTargetAbsent":
        scenario = Scenario(
            alert,
            fires,
            minutes=30,
            expected_labels={k: v for k, v in TARGET.items() if k in ("namespace", "app_kubernetes_io_name")},
        )
    else:
        scenario = Scenario(alert, fires, minutes=30, expected_labels={**TARGET, **PODS[0]})
    if up is not None:
        scenario.add("up", {**TARGET, **PODS[0]}, constant(up, 30))
    else:  # promtool needs some input: an unrelated target
        scenario.add("up", {"job": "prometheus", "instance": "localhost:9090"}, constant(1, 30))
    return scenario


SCENARIOS = {
    "feedback errors: 1 in 6 fails": lambda m, s: feedback_errors(True, ok=60, failed=12),
    "feedback errors: 1 in 60 fails": lambda m, s: feedback_errors(False, ok=60, failed=1),
    "feedback errors: failing predictions and probes do not count": lambda m, s: feedback_errors(
        False, ok=60, failed=0, others_failing=60
    ),
    "feedback errors: too little feedback to judge": lambda m, s: feedback_errors(False, ok=0.2, failed=0.2),
    "target down": lambda m, s: target("NewsgroupsClassifierTargetDown", True, up=0),
    "target up": lambda m, s: target("NewsgroupsClassifierTargetDown", False, up=1),
    "target absent": lambda m, s: target("NewsgroupsClassifierTargetAbsent", True, up=None),
    "target present": lambda m, s: target("NewsgroupsClassifierTargetAbsent", False, up=1),
    "class drift: 85% one class": lambda m, s: class_drift(m, True, skew=0.85, per_minute=12),
    "class drift: baseline shares": lambda m, s: class_drift(m, False, skew=0, per_minute=12),
    "class drift: too few predictions": lambda m, s: class_drift(m, False, skew=0.85, per_minute=2),
    "confidence drift: far less confident": lambda m, s: confidence_drift(m, True, shift=True, per_minute=12),
    "confidence drift: as in training": lambda m, s: confidence_drift(m, False, shift=False, per_minute=12),
    "confidence drift: too few predictions": lambda m, s: confidence_drift(
        m, False, shift=True, per_minute=2
    ),
    "empty inputs: a quarter": lambda m, s: empty_inputs(m, True, empty_per_minute=3),
    "empty inputs: none": lambda m, s: empty_inputs(m, False, empty_per_minute=0),
    "live accuracy: half right": lambda m, s: live_accuracy(m, True, correct=1, wrong=1),
    "live accuracy: 95% right": lambda m, s: live_accuracy(m, False, correct=1.9, wrong=0.1),
    "live accuracy: too little feedback": lambda m, s: live_accuracy(m, False, correct=0.05, wrong=0.05),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_alert(name, promtool, model, stored_series, tmp_path):
    scenario = SCENARIOS[name](model, stored_series)
    tests = {
        "rule_files": [path.name for path in write_rule_files(tmp_path, annotations=False)],
        "evaluation_interval": "1m",
        "tests": [scenario.group()],
    }
    (tmp_path / "test.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    result = run([promtool, "test", "rules", tmp_path / "test.yml"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_scenario(model, stored_series):
    """Every hand-written alert (the SLO alerts Sloth generates: test_slos.py)."""
    groups = prometheus_rule_files()["alerting_rules.yml"]["groups"]
    alerts = {rule["alert"] for group in groups for rule in group["rules"]}
    built = [build(model, stored_series) for build in SCENARIOS.values()]
    assert {s.alert for s in built if s.fires} == alerts
    assert {s.alert for s in built if not s.fires} == alerts
