"""`scale` promoted: Knative's KPA annotations knob for knob, Lambda's reserved and provisioned
concurrency, and a fixed count (said so) where a target cannot scale by requests."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from supervisor.promote.verdict import Verdict

from .promote_support import full_project, promoted

BIN = Path(sys.executable).parent
KPA = "autoscaling.knative.dev"


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _project(tmp_path: Path, scale: str) -> Path:
    root = tmp_path / "fnproj"
    root.mkdir()
    (root / "app.py").write_text("app = None\n")
    path = root / "corral.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [proxy]
            listen = "127.0.0.1:9080"

            [services.fn]
            command = "python3 app.py {{port}}"
            port = "auto"
            venv = false
            app = "app:app"
            scale = {scale}
            """
        )
    )
    return path


def test_knative_gets_every_knob_of_the_kpa(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = promoted(full_project(tmp_path), "knative", out)

    service = _yaml(out / "knative" / "fn.yaml")
    template = service["spec"]["template"]
    assert template["metadata"]["annotations"] == {
        f"{KPA}/min-scale": "0",
        f"{KPA}/max-scale": "4",
        f"{KPA}/target": "1",
        f"{KPA}/target-utilization-percentage": "100",
        f"{KPA}/window": "30s",
        f"{KPA}/panic-window-percentage": "10",
        f"{KPA}/panic-threshold-percentage": "300",
        f"{KPA}/scale-to-zero-pod-retention-period": "120s",
    }
    assert template["spec"]["containerConcurrency"] == 1
    verdicts = {
        f.field: f.verdict
        for f in result.findings.all()
        if f.service == "fn" and "scale" in f.field
    }
    assert verdicts == {
        "scale.min": Verdict.MAPPED,
        "scale.max": Verdict.MAPPED,
        "scale.target": Verdict.MAPPED,
        "scale.concurrency": Verdict.MAPPED,
        "scale.window": Verdict.MAPPED,
        "scale.panic_window": Verdict.MAPPED,
        "scale.panic_threshold": Verdict.MAPPED,
        "scale.idle_timeout": Verdict.APPROXIMATED,
        "scale.cold_start_timeout": Verdict.APPROXIMATED,
        "scale.idle": Verdict.APPROXIMATED,  # freeze: Knative has no frozen pods
        "scale.cold_start_header": Verdict.DROPPED,
    }
    # A service that is not autoscaled keeps its fixed count.
    api = _yaml(out / "knative" / "api.yaml")["spec"]["template"]["metadata"]["annotations"]
    assert api == {f"{KPA}/min-scale": "3", f"{KPA}/max-scale": "3"}


def test_knative_windows_shorter_than_its_minimum_are_said_so(tmp_path: Path) -> None:
    path = _project(tmp_path, '{ min = 1, max = 3, window = "2s", panic_window = "1s" }')
    out = tmp_path / "out"
    result = promoted(path, "knative", out)

    annotations = _yaml(out / "knative" / "fn.yaml")["spec"]["template"]["metadata"]["annotations"]
    assert annotations[f"{KPA}/window"] == "6s"
    # The panic window keeps its length: 1 s of Knative's 6 s.
    assert annotations[f"{KPA}/panic-window-percentage"] == "16.7"
    assert f"{KPA}/scale-to-zero-pod-retention-period" not in annotations  # min 1
    window = result.findings.get("fn", "scale.window")
    assert window is not None and window.verdict is Verdict.APPROXIMATED
    assert "6s to 1h" in window.note
    idle = result.findings.get("fn", "scale.idle_timeout")
    assert idle is not None and (idle.verdict, idle.note) == (Verdict.MAPPED, "unused: min-scale 1")


def test_lambda_concurrency_follows_the_instances_requests(tmp_path: Path) -> None:
    out = tmp_path / "out"
    promoted(full_project(tmp_path), "lambda", out)
    fn = _yaml(out / "lambda" / "template.yaml")["Resources"]["Fn"]["Properties"]
    # concurrency = 1 is Lambda's own model: max instances = most requests at once.
    assert fn["ReservedConcurrentExecutions"] == 4
    assert "ProvisionedConcurrencyConfig" not in fn  # min 0: nothing kept warm

    # Two warm instances of up to ten requests each: twenty environments kept initialised.
    path = _project(tmp_path, "{ min = 2, max = 8, target = 10 }")
    result = promoted(path, "lambda", tmp_path / "out2")
    template_path = tmp_path / "out2" / "lambda" / "template.yaml"
    fn = _yaml(template_path)["Resources"]["Fn"]["Properties"]
    assert fn["ReservedConcurrentExecutions"] == 80
    assert fn["AutoPublishAlias"] == "live"
    assert fn["ProvisionedConcurrencyConfig"] == {"ProvisionedConcurrentExecutions": 20}
    high = result.findings.get("fn", "scale.max")
    assert high is not None and high.verdict is Verdict.APPROXIMATED
    lint = subprocess.run(
        [str(BIN / "cfn-lint"), "--regions", "us-east-1", "--", str(template_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_lambda_reserves_no_more_than_a_default_account_allows(tmp_path: Path) -> None:
    # The defaults (max 10, target 100) would want 1000; a default account's regional limit is
    # 1000 with 100 kept unreserved, so more than 900 is refused at deploy.
    path = _project(tmp_path, "{ min = 9, max = 10, target = 100 }")
    result = promoted(path, "lambda", tmp_path / "out")
    fn = _yaml(tmp_path / "out" / "lambda" / "template.yaml")["Resources"]["Fn"]["Properties"]
    assert fn["ReservedConcurrentExecutions"] == 900
    # Provisioning past the reservation is refused too: min 9 x 100 is kept within it.
    assert fn["ProvisionedConcurrencyConfig"] == {"ProvisionedConcurrentExecutions": 900}
    high = result.findings.get("fn", "scale.max")
    assert high is not None and high.verdict is Verdict.APPROXIMATED
    assert "900, not max x 100" in high.note and "= 1000" in high.note


@pytest.mark.parametrize("target", ["compose", "swarm", "k8s"])
def test_fixed_count_targets_run_min_and_say_what_is_lost(tmp_path: Path, target: str) -> None:
    out = tmp_path / "out"
    result = promoted(full_project(tmp_path), target, out)

    if target == "k8s":
        deployment = _yaml(out / "k8s" / "fn-deployment.yaml")
        assert deployment["spec"]["replicas"] == 1  # min 0: one, or nothing would answer
    else:
        name = "compose.yaml" if target == "compose" else "stack.yaml"
        service = _yaml(out / name)["services"]["fn"]
        assert service.get("deploy", {}).get("replicas", 1) == 1
    low = result.findings.get("fn", "scale.min")
    assert low is not None and low.verdict is Verdict.APPROXIMATED
    assert low.note.startswith("1 replicas, fixed:")
    target_finding = result.findings.get("fn", "scale.target")
    assert target_finding is not None and target_finding.verdict is Verdict.DROPPED
    assert "use the knative target" in target_finding.note
