"""Evaluation, quality gate, registry approval and the two-stage combination."""

import json
from uuid import UUID

import numpy as np
import pytest

from fieldguide.evaluate.gate import GateConfig, judge
from fieldguide.evaluate.metrics import Evaluation, calibration, top_k_accuracy
from fieldguide.evaluate.two_stage import combine
from registry.approvals import ApprovalError, decide, initial_approval
from tests.conftest import ROOT, run_cli


def test_two_stage_top_k_combination_on_a_hand_made_case():
    # Two groups: group 0 holds species 0, 1; group 1 holds species 2, 3.
    p_group = np.array([[0.6, 0.4], [0.3, 0.7]])
    p_child = {0: np.array([[0.9, 0.1], [0.5, 0.5]]), 1: np.array([[0.2, 0.8], [0.25, 0.75]])}
    species_of = {0: [0, 1], 1: [2, 3]}
    k1 = combine(p_group, p_child, species_of, 4, k=1)
    np.testing.assert_allclose(k1, [[0.54, 0.06, 0, 0], [0, 0, 0.175, 0.525]])
    k2 = combine(p_group, p_child, species_of, 4, k=2)
    np.testing.assert_allclose(k2, [[0.54, 0.06, 0.08, 0.32], [0.15, 0.15, 0.175, 0.525]])
    np.testing.assert_allclose(k2.sum(1), 1.0)  # with every group kept, a proper distribution
    # Routing to the top group alone loses row 0's chance at species 3; summing over both groups keeps it.
    p_group2 = np.array([[0.55, 0.45]])
    p_child2 = {0: np.array([[0.5, 0.5]]), 1: np.array([[0.0, 1.0]])}
    assert combine(p_group2, p_child2, species_of, 4, k=1).argmax() in (0, 1)
    assert combine(p_group2, p_child2, species_of, 4, k=2).argmax() == 3


def test_top_k_and_calibration():
    labels = np.array([0, 1, 2, 2])
    probs = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.3, 0.5], [0.1, 0.5, 0.4]])
    assert top_k_accuracy(labels, probs, 1) == 0.5
    assert top_k_accuracy(labels, probs, 2) == 1.0
    ece, bins = calibration(labels, probs, bins=10)
    # bins: 0.8 → correct, 0.6 → wrong, 0.5 (two rows: one correct at 0.5, one wrong at 0.5).
    assert sum(b["count"] for b in bins) == 4
    assert ece == pytest.approx((abs(1 - 0.8) + abs(0 - 0.6) + 2 * abs(0.5 - 0.5)) / 4)


def _evaluation(top1: float, macro_f1: float = 0.9, ece: float = 0.05) -> Evaluation:
    metrics = {"top1": top1, "macro_f1": macro_f1, "ece": ece}
    return Evaluation("child-x", "ds-1", "test", ["a", "b"], 10, metrics, [], [], [], [])


def test_gate_minima_and_production_comparison():
    cfg = GateConfig(min_top1=0.6, min_macro_f1=0.5, max_ece=0.2, max_drop=0.05)
    assert judge(_evaluation(0.8), cfg).passed
    failed = judge(_evaluation(0.5, macro_f1=0.4, ece=0.3), cfg)
    assert not failed.passed and len(failed.reasons) == 3
    assert judge(_evaluation(0.80), cfg, _evaluation(0.84), "v3").passed  # within max_drop
    worse = judge(_evaluation(0.78), cfg, _evaluation(0.84), "v3")
    assert not worse.passed and "production v3" in worse.reasons[0]


def test_approval_rules():
    pending = initial_approval({"passed": True, "reasons": []})
    assert pending["state"] == "pending"
    approved = decide("m v1", pending, True, "approve", "alice", "ok")
    assert approved["state"] == "approved" and approved["by"] == "alice" and not approved["forced"]
    with pytest.raises(ApprovalError, match="already approved"):
        decide("m v1", approved, True, "approve", "bob")
    failed = initial_approval({"passed": False, "reasons": ["top1 0.1 < min_top1 0.5"]})
    assert failed["state"] == "gate_failed"
    with pytest.raises(ApprovalError, match="--force"):
        decide("m v2", failed, False, "approve", "alice")
    assert decide("m v2", failed, False, "approve", "alice", force=True)["forced"]
    assert decide("m v2", failed, False, "reject", "alice")["state"] == "rejected"
    with pytest.raises(ApprovalError, match="--by"):
        decide("m v1", pending, True, "approve", " ")
    with pytest.raises(ApprovalError, match="not eligible"):
        decide("m v3", initial_approval({"passed": True}, same_as="v1"), True, "approve", "alice")


def test_evaluate_step_reports_gate_and_registers_pending(child_run):
    """Acceptance 1: report + Evidently reports are visualized artifacts and MLflow artifacts; version pending."""
    import mlflow
    from zenml.client import Client

    from stacks import tracking_uri

    steps = child_run.steps
    evaluation = steps["evaluate_model"].outputs["evaluation"][0]
    assert evaluation.visualizations and {v.type.value for v in evaluation.visualizations} == {"html", "image"}
    for name in ("drift_report", "quality_report"):
        artifact = steps["report_drift"].outputs[name][0]
        assert [v.type.value for v in artifact.visualizations] == ["html"]
        assert "evidently" in artifact.load().lower()
    ev = evaluation.load()
    assert ev.n > 0 and {"top1", "macro_f1", "ece", "latency_ms_p50"} <= set(ev.metrics)
    assert len(ev.per_class) == len(ev.classes) == 3 and ev.gate["passed"]
    version = Client().get_model_version(model_version_name_or_number_or_id=child_run.model_version.id)
    meta = version.run_metadata
    assert meta["approval"]["state"] == "pending" and meta["test_top1"] == ev.metrics["top1"]
    client = mlflow.MlflowClient(tracking_uri())
    files = {a.path for a in client.list_artifacts(meta["mlflow_run_id"])}
    assert {"evaluation_report.html", "evidently_drift_report.html", "evidently_quality_report.html"} <= files
    assert "confusion_matrix.png" in files and "reliability.png" in files


def test_bad_model_fails_gate_and_needs_force(dataset):
    """Acceptance 3 and 4: gate failure recorded; approve needs --force; unknown model/version change nothing."""
    from zenml.client import Client

    from fieldguide.keys import ModelKey
    from pipelines.runner import run_model

    run = run_model(ROOT, ModelKey.child("ferns"), str(ROOT / "tests/configs/child_bad.yaml"), False, dataset)
    version = Client().get_model_version(model_version_name_or_number_or_id=run.model_version.id)
    meta = version.run_metadata
    assert not meta["gate"]["passed"] and meta["approval"]["state"] == "gate_failed"
    number = str(version.number)

    def approval() -> dict:
        return Client().get_model_version("child-ferns", version.number).run_metadata["approval"]

    res = run_cli("approve", "child-ferns", number, "--by", "tester")
    assert res.returncode == 2 and "quality gate" in res.stderr and "--force" in res.stderr
    assert approval()["state"] == "gate_failed"
    for args in (("approve", "child-nope", number), ("reject", "child-ferns", "999"), ("approve", "router", "x")):
        res = run_cli(*args, "--by", "tester")
        assert res.returncode == 2, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and res.stderr.startswith("error: "), res.stderr
    assert approval()["state"] == "gate_failed"
    res = run_cli("approve", "child-ferns", f"v{number}", "--by", "tester", "--force", "--note", "demo", "--no-deploy")
    assert res.returncode == 0, res.stderr
    record = approval()
    assert record["state"] == "approved" and record["forced"] and record["by"] == "tester"
    listing = run_cli("models", "--model", "child-ferns")
    assert "approved (forced)" in listing.stdout and "tester" in listing.stdout


def test_release_evaluation_table(release_versions):
    """Acceptance 2: router + children → the two-stage table printed and recorded."""
    from zenml.client import Client

    child_args = []
    for name, version_id in release_versions.items():
        if name.startswith("child-"):
            number = Client().get_model_version(model_version_name_or_number_or_id=UUID(version_id)).number
            child_args += ["--child", f"{name.removeprefix('child-')}={number}"]
    router = Client().get_model_version(model_version_name_or_number_or_id=UUID(release_versions["router"]))
    res = run_cli("evaluate-release", "--router", str(router.number), *child_args)
    assert res.returncode == 0, res.stderr[-2000:]
    for line in ("router accuracy (group)", "oracle child accuracy", "top1@k=1", "top1@k=2", "top1@k=3"):
        assert line in res.stdout
    recorded = Client().get_model_version("router", router.number).run_metadata["two_stage_evaluation"]
    assert set(recorded["versions"]) == {"router", "child-ferns", "child-flowers", "child-succulents"}
    assert recorded["versions"]["router"] == f"v{router.number}"
    assert 0.0 <= recorded["end-to-end accuracy, top1@k=1"] <= recorded["oracle child accuracy (true group)"] + 1e-9
    json.dumps(recorded)
