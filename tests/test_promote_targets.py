"""corral promote, target by target: every field gets a verdict, output is deterministic and
matches the golden files, --strict and --json behave, bad requests are refused clearly."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import config
from config.model import ProxySpec, ServiceSpec
from supervisor.promote import TARGETS, Options, PromoteError, promote
from supervisor.promote.verdict import PROXY, UNJUDGED, Verdict

from .promote_support import (
    CORRAL_SOURCE,
    GOLDEN,
    ROOT,
    copy_shop,
    full_project,
    idle_proxy,
    promoted,
    tree,
    without_proxy,
)

CORRAL = [sys.executable, "-m", "supervisor"]


def _expected_fields(value: object) -> list[str]:
    """Dotted field names, from dataclasses.fields itself: a field added later shows up here."""
    names = []
    for f in dataclasses.fields(value):  # type: ignore[arg-type]
        inner = getattr(value, f.name)
        if dataclasses.is_dataclass(inner) and not isinstance(inner, type):
            names += [f"{f.name}.{sub}" for sub in _expected_fields(inner)]
        else:
            names.append(f.name)
    return names


def test_the_fully_loaded_project_sets_every_field(tmp_path: Path) -> None:
    # Guards the test below: a field left at its default would be judged "default" for free.
    plan = config.load(full_project(tmp_path), environ={})
    defaults = ServiceSpec(name="x", command=("x",), cwd=tmp_path)
    unset = [
        f.name
        for f in dataclasses.fields(ServiceSpec)
        if all(getattr(s, f.name) == getattr(defaults, f.name) for s in plan.services.values())
    ]
    assert unset == [], f"set these in full_project() too: {unset}"
    assert plan.proxy is not None
    proxy_unset = [
        f.name
        for f in dataclasses.fields(ProxySpec)
        if getattr(plan.proxy, f.name) == getattr(ProxySpec(), f.name)
    ]
    assert proxy_unset == []


@pytest.mark.parametrize("project", [full_project, without_proxy, idle_proxy])
@pytest.mark.parametrize("target", TARGETS)
def test_every_field_of_every_service_gets_a_verdict(
    tmp_path: Path, target: str, project: Callable[[Path], Path]
) -> None:
    plan = config.load(project(tmp_path), environ={})
    if target == "lambda" and project is idle_proxy:
        with pytest.raises(PromoteError, match="can be a Lambda function"):
            promote(plan, target, tmp_path / "out", [])
        return
    result = promote(plan, target, tmp_path / "out", [])

    missing, unjudged = [], []
    for spec in plan.services.values():
        for name in _expected_fields(spec):
            finding = result.findings.get(spec.name, name)
            if finding is None:
                missing.append(f"{spec.name}.{name}")
            elif finding.note == UNJUDGED:
                unjudged.append(f"{spec.name}.{name}")
            assert finding is None or finding.note, f"{spec.name}.{name} has no note"
    for name in _expected_fields(plan.proxy) if plan.proxy else []:
        finding = result.findings.get(PROXY, name)
        if finding is None or finding.note == UNJUDGED:
            unjudged.append(f"{PROXY}.{name}")
    assert missing == []
    assert unjudged == [], f"{target} has no verdict of its own for: {unjudged}"


def test_proxy_fields_are_the_proxy_specs_fields() -> None:
    assert _expected_fields(ProxySpec())[:2] == ["listen", "connect_timeout"]


@pytest.mark.parametrize("target", TARGETS)
def test_same_input_same_bytes(tmp_path: Path, target: str) -> None:
    path = full_project(tmp_path) if target == "lambda" else copy_shop(tmp_path)
    out = path.parent / "out"
    first = promoted(path, target, out)
    before = tree(out)
    shutil.rmtree(out)
    second = promoted(path, target, out)

    assert before  # promoted something
    assert tree(out) == before
    assert first.findings.to_json() == second.findings.to_json()


SHIM = "lambda/shim/corral_lambda.py"


def _golden_tree(out: Path, target: str) -> dict[str, bytes]:
    """What the golden files hold: not Corral's own source, not the shim (a copy of
    supervisor/promote/lambda_shim.py), and the images only under the docker target."""
    return {
        name: data
        for name, data in tree(out).items()
        if not name.startswith(CORRAL_SOURCE)
        and name != SHIM
        and (target == "docker" or not name.startswith("docker/"))
    }


@pytest.mark.parametrize("target", ["compose", "swarm", "k8s", "knative"])
def test_every_container_target_writes_the_docker_targets_images(
    tmp_path: Path, target: str
) -> None:
    path = copy_shop(tmp_path)
    images = {n: d for n, d in tree(_out(path, "docker")).items() if n.startswith("docker/")}
    theirs = {n: d for n, d in tree(_out(path, target)).items() if n.startswith("docker/")}
    assert theirs and set(theirs) <= set(images)
    assert all(theirs[name] == images[name] for name in theirs)


def _out(config_path: Path, target: str) -> Path:
    out = config_path.parent / "deploy"
    shutil.rmtree(out, ignore_errors=True)
    promoted(config_path, target, out)
    return out


def test_the_lambda_shim_is_the_module_corral_tests(tmp_path: Path) -> None:
    out = _out(full_project(tmp_path), "lambda")
    source = ROOT / "supervisor" / "promote" / "lambda_shim.py"
    assert (out / SHIM).read_bytes() == source.read_bytes()


@pytest.mark.parametrize("target", [t for t in TARGETS if t != "lambda"])
def test_the_shop_matches_the_golden_files(tmp_path: Path, target: str) -> None:
    out = tmp_path / "shop" / "deploy"
    result = promoted(copy_shop(tmp_path), target, out)
    _compare_golden(out, target, result.findings.report() + "\n")


def test_lambda_matches_the_golden_files(tmp_path: Path) -> None:
    # The shop has no ASGI/WSGI app; the fully loaded project's api has one.
    out = tmp_path / "full" / "deploy"
    result = promoted(full_project(tmp_path), "lambda", out)
    _compare_golden(out, "lambda", result.findings.report() + "\n")


def _compare_golden(out: Path, target: str, report: str) -> None:
    """Compare with tests/golden/promote/TARGET; CORRAL_UPDATE_GOLDEN=1 rewrites it instead."""
    got = _golden_tree(out, target)
    golden = GOLDEN / target
    if os.environ.get("CORRAL_UPDATE_GOLDEN"):
        shutil.rmtree(golden, ignore_errors=True)
        for name, data in got.items():
            (golden / "files" / name).parent.mkdir(parents=True, exist_ok=True)
            (golden / "files" / name).write_bytes(data)
        (golden / "REPORT").write_text(report)
    want = tree(golden / "files")
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].decode() == want[name].decode(), name
    assert report == (golden / "REPORT").read_text()


def test_the_entry_image_carries_the_running_corral(tmp_path: Path) -> None:
    out = tmp_path / "out"
    promoted(copy_shop(tmp_path), "compose", out)

    copied = {
        name[len(CORRAL_SOURCE) :]: data
        for name, data in tree(out).items()
        if name.startswith(CORRAL_SOURCE) and name.endswith(".py")
    }
    source = {
        path.relative_to(ROOT).as_posix(): path.read_bytes()
        for package in ("config", "proxy", "supervisor")
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    assert copied == source
    pyproject = (out / CORRAL_SOURCE / "pyproject.toml").read_text()
    assert 'name = "corral"' in pyproject
    assert '"uvloop>=0.19"' in pyproject
    assert "pytest" not in pyproject  # no test extras in the image


def test_services_can_be_chosen_and_unknown_ones_are_refused(tmp_path: Path) -> None:
    path = copy_shop(tmp_path)
    result = promoted(path, "compose", tmp_path / "out", ["api"])
    compose = (tmp_path / "out" / "compose.yaml").read_text()
    assert "  api:" in compose and "  worker:" not in compose and "  migrate:" not in compose
    finding = result.findings.get("api", "depends_on")
    assert finding is not None and finding.verdict is Verdict.DROPPED
    assert "migrate not promoted with it" in finding.note

    plan = config.load(path, environ={})
    with pytest.raises(PromoteError, match="unknown service 'apii'"):
        promote(plan, "compose", tmp_path / "out", ["apii"], Options())


def test_code_outside_the_project_cannot_be_built(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "proj").mkdir()
    path = tmp_path / "proj" / "corral.toml"
    path.write_text('[services.a]\ncommand = "python a.py"\ncwd = "../elsewhere"\nvenv = false\n')
    with pytest.raises(PromoteError, match=r"services\.a\.cwd: .* is outside the project"):
        promote(config.load(path, environ={}), "docker", tmp_path / "out", [], Options())


def _corral(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CORRAL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_strict_fails_on_a_drop_and_writes_nothing(tmp_path: Path) -> None:
    path = copy_shop(tmp_path)
    out = tmp_path / "out"

    result = _corral("promote", "docker", "-f", str(path), "-o", str(out), "--strict", cwd=tmp_path)

    assert result.returncode == 1
    assert "dropped      api.instances: an image alone does not carry it" in result.stdout
    assert "--strict: settings would be dropped; nothing written" in result.stderr
    assert not out.exists()
    ok = _corral("promote", "compose", "-f", str(path), "-o", str(out), "--strict", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert (out / "compose.yaml").is_file()


def test_json_lists_files_and_every_verdict(tmp_path: Path) -> None:
    path = copy_shop(tmp_path)
    result = _corral(
        "promote", "swarm", "-f", str(path), "-o", str(tmp_path / "o"), "--json", cwd=tmp_path
    )

    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["target"] == "swarm" and data["written"] is True
    assert "stack.yaml" in data["files"]
    verdicts = {(v["service"], v["field"]): v for v in data["verdicts"]}
    assert verdicts[("api", "max_surge")]["verdict"] == "mapped"
    assert verdicts[("api", "depends_on")]["verdict"] == "approximated"
    assert {v["verdict"] for v in data["verdicts"]} <= {"mapped", "approximated", "dropped"}


def test_deploy_without_the_tool_says_which_is_missing(tmp_path: Path) -> None:
    path = copy_shop(tmp_path)
    env = {**os.environ, "DOCKER": "no-such-docker"}
    args = ["promote", "k8s", "-f", str(path), "-o", str(tmp_path / "o"), "--deploy"]
    result = subprocess.run([*CORRAL, *args], capture_output=True, text=True, env=env, timeout=60)

    assert result.returncode == 1
    assert "no-such-docker not found on PATH (set $DOCKER to the program to use)" in result.stderr
    assert (tmp_path / "o" / "k8s" / "kustomization.yaml").is_file()  # written before the tools


def test_a_service_without_app_cannot_go_to_lambda(tmp_path: Path) -> None:
    result = _corral(
        "promote", "lambda", "-f", str(copy_shop(tmp_path)), "-o", str(tmp_path / "o"), cwd=tmp_path
    )

    assert result.returncode == 1
    assert "no service of corral.toml can be a Lambda function" in result.stderr


def test_base_image_and_registry_options_name_the_images(tmp_path: Path) -> None:
    path = copy_shop(tmp_path)
    out = tmp_path / "out"
    promoted(path, "k8s", out, base_image="python:3.11-bookworm", registry="ghcr.io/acme/")

    dockerfile = (out / "docker" / "api" / "Dockerfile").read_text()
    assert "FROM python:3.11-bookworm AS deps" in dockerfile
    assert "\nFROM python:3.11-bookworm\n" in dockerfile
    deployment = (out / "k8s" / "api-deployment.yaml").read_text()
    assert "image: ghcr.io/acme/shop-api:latest" in deployment
    assert "python:3.11-slim" not in dockerfile + deployment


def test_the_cli_offers_exactly_the_targets() -> None:
    from supervisor.cli import _targets  # kept apart so `corral ps` does not import promote

    assert _targets() == TARGETS
