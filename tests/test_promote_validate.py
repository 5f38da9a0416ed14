"""The promoted artifacts, checked by the real tools: the compose-spec JSON schema,
`docker stack config`, `kubernetes-validate --strict`, `cfn-lint` and the SAM transform."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from .promote_support import SCHEMA, copy_shop, full_project, promoted

BIN = Path(sys.executable).parent


def _projects(tmp_path: Path) -> list[Path]:
    return [copy_shop(tmp_path), full_project(tmp_path)]


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize(("target", "file"), [("compose", "compose.yaml"), ("swarm", "stack.yaml")])
def test_compose_and_stack_files_match_the_compose_spec(
    tmp_path: Path, target: str, file: str
) -> None:
    import jsonschema

    schema = json.loads(SCHEMA.read_text())
    # It names draft-07 as ".../draft-07/schema" (no "#"), which jsonschema does not look up.
    assert "draft-07" in schema["$schema"]
    validator = jsonschema.Draft7Validator(schema)
    for path in _projects(tmp_path):
        out = path.parent / "out"
        promoted(path, target, out)
        errors = [
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(_load_yaml(out / file))
        ]
        assert errors == [], path


def _stack_config_cli() -> str | None:
    """A docker CLI that has `docker stack config` (Docker 23+; Debian's 20.10 has not)."""
    candidates = [os.environ.get("DOCKER", ""), "/usr/bin/docker", "/usr/local/bin/docker"]
    for candidate in filter(None, candidates):
        found = shutil.which(candidate)
        if found is None:
            continue
        probe = subprocess.run(
            [found, "stack", "config", "--help"], capture_output=True, text=True, check=False
        )
        if probe.returncode == 0 and "--compose-file" in probe.stdout:
            return found
    return None


def test_the_stack_file_passes_docker_stack_config(tmp_path: Path) -> None:
    cli = _stack_config_cli()
    if cli is None:
        if "docker" in os.environ.get("CORRAL_REQUIRE", "").split(","):
            pytest.fail("CORRAL_REQUIRE=docker: no docker CLI with `stack config` (Docker 23+)")
        pytest.skip("no docker CLI with `docker stack config` (it came with Docker 23)")
    for path in _projects(tmp_path):
        out = path.parent / "out"
        promoted(path, "swarm", out)
        result = subprocess.run(
            [cli, "stack", "config", "-c", str(out / "stack.yaml")],
            capture_output=True,
            text=True,
            check=False,
            cwd=out,
        )
        assert result.returncode == 0, result.stderr
        assert "order: start-first" in result.stdout
        assert "Ignoring unsupported options" not in result.stderr, result.stderr


def _kubernetes_validate(*files: Path) -> str:
    result = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", *map(str, files)],
        capture_output=True,
        text=True,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def test_every_k8s_manifest_passes_kubernetes_validate_strict(tmp_path: Path) -> None:
    for path in _projects(tmp_path):
        out = path.parent / "out"
        promoted(path, "k8s", out)
        manifests = sorted((out / "k8s").glob("*.yaml"))
        resources = [p for p in manifests if p.name != "kustomization.yaml"]
        output = _kubernetes_validate(*resources)

        documents = [d for p in resources for d in yaml.safe_load_all(p.read_text())]
        assert output.count(" passed for resource ") == len(documents), output
        assert "WARN" not in output and "ERROR" not in output, output
        kustomization = _load_yaml(out / "k8s" / "kustomization.yaml")
        assert sorted(kustomization["resources"]) == [p.name for p in resources]


def test_k8s_init_container_scripts_are_python(tmp_path: Path) -> None:
    out = tmp_path / "out"
    promoted(full_project(tmp_path), "k8s", out)
    api = _load_yaml(out / "k8s" / "api-deployment.yaml")
    waits = api["spec"]["template"]["spec"]["initContainers"]
    assert [w["name"] for w in waits] == ["wait-for-db", "wait-for-migrate"]
    for wait in waits:
        assert wait["command"][:2] == ["python", "-c"]
        ast.parse(wait["command"][2])
    assert '("db", 8000)' in waits[0]["command"][2]
    assert "/jobs/migrate" in waits[1]["command"][2]


def test_knative_services_and_their_pod_specs_validate(tmp_path: Path) -> None:
    for path in _projects(tmp_path):
        out = path.parent / "out"
        promoted(path, "knative", out)
        services = sorted(
            p for p in (out / "knative").glob("*.yaml") if not p.stem.endswith("-env")
        )
        assert services
        for service_file in services:
            service = _load_yaml(service_file)
            assert service["apiVersion"] == "serving.knative.dev/v1"
            template = service["spec"]["template"]
            annotations = template["metadata"]["annotations"]
            low = int(annotations["autoscaling.knative.dev/min-scale"])
            high = int(annotations["autoscaling.knative.dev/max-scale"])
            # A fixed count, or (for the autoscaled fn) Corral's scale table.
            assert low == high or "autoscaling.knative.dev/target" in annotations
            assert all(isinstance(value, str) for value in annotations.values())
            # kubernetes-validate knows no Knative schema (a CRD): check the pod spec the
            # Service carries as the pod spec of a Deployment, strictly.
            pod = {
                k: v
                for k, v in template["spec"].items()
                if k not in ("containerConcurrency", "timeoutSeconds")
            }
            labels = {"app": service["metadata"]["name"]}
            deployment = {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": service["metadata"]["name"]},
                "spec": {
                    "selector": {"matchLabels": labels},
                    "template": {"metadata": {"labels": labels}, "spec": pod},
                },
            }
            wrapped = tmp_path / f"{service_file.stem}-as-deployment.yaml"
            wrapped.write_text(yaml.safe_dump(deployment))
            output = _kubernetes_validate(wrapped)
            assert "passed for resource deployment/" in output, output
        config_maps = sorted((out / "knative").glob("*-env.yaml"))
        if config_maps:
            _kubernetes_validate(*config_maps)


def _cfn_lint(path: Path) -> None:
    result = subprocess.run(
        [str(BIN / "cfn-lint"), "--regions", "us-east-1", "--", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


class _NoManagedPolicies:
    """The translator looks up AWS managed policies only for `Policies` names; none are used."""

    def load(self) -> dict[str, str]:
        return {}


def test_the_sam_template_passes_cfn_lint_before_and_after_the_sam_transform(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from samtranslator.translator.transform import transform

    out = tmp_path / "out"
    promoted(full_project(tmp_path), "lambda", out)
    template_path = out / "lambda" / "template.yaml"
    _cfn_lint(template_path)

    # What `sam package` does before the transform: local code paths become S3 locations.
    template = _load_yaml(template_path)
    for resource in template["Resources"].values():
        props = resource["Properties"]
        for key in ("CodeUri", "ContentUri"):
            if key in props:
                props[key] = f"s3://corral-artifacts/{props[key].strip('./').replace('/', '-')}.zip"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    cloudformation = transform(template, {}, _NoManagedPolicies())  # type: ignore[arg-type]

    kinds = sorted({r["Type"] for r in cloudformation["Resources"].values()})
    assert "AWS::Lambda::Function" in kinds
    assert "AWS::ApiGatewayV2::Api" in kinds
    assert "AWS::Lambda::LayerVersion" in kinds
    functions = {
        r["Properties"]["Environment"]["Variables"]["CORRAL_SERVICE"]: r
        for r in cloudformation["Resources"].values()
        if r["Type"] == "AWS::Lambda::Function"
    }
    function = functions["api"]
    assert function["Properties"]["ReservedConcurrentExecutions"] == 3
    # fn: autoscaled up to 4 instances of one request each.
    assert functions["fn"]["Properties"]["ReservedConcurrentExecutions"] == 4
    assert function["Properties"]["Handler"] == "corral_lambda.handler"
    transformed = tmp_path / "transformed.json"
    transformed.write_text(json.dumps(cloudformation, indent=2))
    _cfn_lint(transformed)
