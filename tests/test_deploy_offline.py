"""Offline checks of deploy/: hadolint on the Dockerfile, the build context, `kubectl kustomize`
of every overlay, strict schema validation (Kubernetes 1.31 and the newest bundled schema),
the cross-object contracts of deploy/manifests.py, a checkov policy scan with the committed skip
list, and mutations of the sources that each check must catch. A missing tool skips its test
with the reason (install lines: the README's 'Deploying' section)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT

if str(ROOT) not in sys.path:  # deploy/ is imported from the checkout, like the tests
    sys.path.insert(0, str(ROOT))
from deploy.manifests import (  # noqa: E402
    K8S,
    OVERLAYS,
    Doc,
    ManifestError,
    check_config_files,
    check_probes,
    check_selectors,
    check_service_ports,
    find_tool,
    load_docs,
    render,
)

DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
CHECKOV_CONFIG = ROOT / "deploy" / "checkov.yaml"
OLDEST_K8S = "1.31.0"


def _need(name: str) -> str:
    exe = find_tool(name)
    if exe is None:
        pytest.skip(f"{name} is not installed (see the README's 'Deploying' section, 'Offline checks: tools')")
    return exe


# ------------------------------------------------------------------------ Dockerfile
def test_hadolint_dockerfile() -> None:
    exe = _need("hadolint")
    proc = subprocess.run([exe, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        allow = line.startswith("!")
        pat = line.lstrip("!").strip("/")
        rx = re.escape(pat).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        rules.append((allow, re.compile(rx.replace(r"\?", "[^/]"))))
    return rules


def excluded_from_context(rel: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders wins."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for allow, rx in _dockerignore_rules():
        if any(rx.fullmatch(p) for p in prefixes):
            verdict = not allow
    return verdict


def _copy_sources() -> list[str]:
    sources = []
    for line in DOCKERFILE.read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            sources += [w.rstrip("/") for w in words[1:-1] if not w.startswith("--")]
    return sources


def test_build_context_has_what_the_image_installs() -> None:
    sources = _copy_sources()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]
    needed = {"pyproject.toml", "setup.py", pyproject["project"]["readme"], *packages}
    assert needed <= set(sources), f"Dockerfile COPY misses {needed - set(sources)}"
    for src in sources:
        path = ROOT / src
        assert path.exists(), f"COPY {src}: no such path"
        files = [path] if path.is_file() else [f for f in path.rglob("*.py") if "__pycache__" not in f.parts]
        assert files, f"COPY {src}: nothing to copy"
        for f in files:
            rel = f.relative_to(ROOT).as_posix()
            assert not excluded_from_context(rel), f".dockerignore excludes {rel}, which COPY {src} needs"
    assert excluded_from_context("tests/conftest.py") and excluded_from_context(".venv/bin/python")


def test_image_torch_pins_satisfy_pyproject() -> None:
    from packaging.requirements import Requirement

    args = dict(re.findall(r"^ARG (\w+)=(\S+)", DOCKERFILE.read_text(), flags=re.M))
    deps = {Requirement(d).name: Requirement(d) for d in tomllib.loads((ROOT / "pyproject.toml").read_text())
            ["project"]["dependencies"]}
    for pkg, arg in (("torch", "TORCH_VERSION"), ("torchvision", "TORCHVISION_VERSION")):
        assert deps[pkg].specifier.contains(args[arg]), f"{arg}={args[arg]} outside pyproject's {deps[pkg]}"
    assert re.search(r"@sha256:[0-9a-f]{64}$", args["PYTHON_IMAGE"]), "base image must be pinned by digest"
    assert re.search(r'^ENTRYPOINT \["fedcore"\]$', DOCKERFILE.read_text(), flags=re.M)
    assert "fedcore" in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


# ------------------------------------------------------------------------ manifests
@lru_cache(maxsize=None)
def rendered(overlay: str, root: Path = K8S) -> str:
    _need("kubectl")
    return render(root / "overlays" / overlay)


@lru_cache(maxsize=1)
def rest_get_paths() -> frozenset[str]:
    from fedcore.config import Settings
    from fedcore.app.build import build_federation
    from transports.rest.app import create_app

    settings = Settings.load(None, rest_port=0, grpc_port=0)
    app = create_app(build_federation(settings), settings.transports)
    # The documented GET operations, plus the routes kept out of the schema (dashboard, docs).
    documented = {path for path, ops in app.openapi()["paths"].items() if "get" in ops}
    plain = {str(getattr(r, "path", "")) for r in app.routes if "GET" in (getattr(r, "methods", None) or ())}
    return frozenset(documented | plain)


def grpc_health_services() -> list[str]:
    """What transports/grpc/server.py marks SERVING: the overall server ("") and the service."""
    from transports.grpc.options import SERVICE_NAME

    return ["", SERVICE_NAME]


def load_settings_toml(content: bytes) -> Any:
    import tempfile

    from fedcore.config import Settings

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fedcore.toml"
        path.write_bytes(content)
        return Settings.load(path)


def contract_findings(docs: list[Doc]) -> list[str]:
    return (check_service_ports(docs) + check_probes(docs, rest_get_paths(), grpc_health_services())
            + check_config_files(docs, load_settings_toml) + check_selectors(docs))


def schema_versions() -> list[str]:
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    return [OLDEST_K8S, kv.latest_version()]


def schema_findings(docs: list[Doc], version: str) -> list[str]:
    import kubernetes_validate as kv

    out = []
    for d in docs:
        try:
            kv.validate(d, version, strict=True)
        except (kv.ValidationError, kv.SchemaNotFoundError) as exc:
            out.append(f"{d.get('kind')}/{d.get('metadata', {}).get('name')} vs {version}: {exc}")
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_every_object(overlay: str) -> None:
    docs = load_docs(rendered(overlay))
    kinds = sorted(d["kind"] for d in docs)
    for kind in ("ConfigMap", "Deployment", "Namespace", "NetworkPolicy", "PersistentVolumeClaim",
                 "PodDisruptionBudget", "Service", "StatefulSet"):
        assert kind in kinds, f"{overlay}: no {kind} in {kinds}"
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
    assert namespaces == {f"fedcore-{overlay}" if overlay == "dev" else "fedcore"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_schema_strict(overlay: str) -> None:
    docs = load_docs(rendered(overlay))
    for version in schema_versions():
        assert schema_findings(docs, version) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_contracts(overlay: str) -> None:
    assert contract_findings(load_docs(rendered(overlay))) == []


def _checkov() -> str:
    exe = find_tool("checkov")
    venv_tool = Path(sys.prefix) / "checkov" / "bin" / "checkov"  # its own venv: its pins clash with ours
    if exe is None and venv_tool.exists():
        exe = str(venv_tool)
    if exe is None:
        pytest.skip(f"checkov is not installed (looked on PATH and in {venv_tool})")
    return exe


def test_checkov_policy_scan(tmp_path: Path) -> None:
    exe = _checkov()
    files = []
    for overlay in OVERLAYS:
        files += ["-f", str(tmp_path / f"{overlay}.yaml")]
        (tmp_path / f"{overlay}.yaml").write_text(rendered(overlay))
    env = dict(os.environ, BC_SKIP_MAPPING="TRUE")  # offline: do not fetch guideline mappings
    proc = subprocess.run([exe, "--config-file", str(CHECKOV_CONFIG), "--skip-download", "-o", "json", *files],
                          capture_output=True, text=True, timeout=240, env=env)
    report = json.loads(proc.stdout)
    report = report if isinstance(report, dict) else {"results": {"failed_checks": [
        f for r in report for f in r["results"]["failed_checks"]]}, "summary": report[0]["summary"]}
    failed = [f"{f['check_id']} {f['resource']}: {f['check_name']}" for f in report["results"]["failed_checks"]]
    assert failed == [] and proc.returncode == 0, "\n".join(failed) or proc.stderr[-2000:]
    assert report["summary"]["passed"] > 50  # it scanned the objects


def test_checkov_skips_each_have_a_reason() -> None:
    lines = CHECKOV_CONFIG.read_text().splitlines()
    start = lines.index("skip-check:")
    for i, line in enumerate(lines[start + 1:], start + 1):
        if not line.startswith("  - "):
            continue
        j = i - 1
        while lines[j].startswith("  - "):  # checks grouped under one comment
            j -= 1
        assert lines[j].strip().startswith("#") and len(lines[j].strip()) > 20, f"no reason above {line.strip()}"


# ------------------------------------------------------------------------ mutations
MUTATIONS: dict[str, tuple[str, str, str, str]] = {
    # name: (file under deploy/k8s, old text, new text, expected finding substring)
    "probe path": ("base/server-deployment.yaml", "path: /health", "path: /healthz", "not a GET route"),
    "service port name": ("base/server-service.yaml", "targetPort: grpc", "targetPort: grpc-api", "targetPort 'grpc-api'"),
    "container port name": ("base/server-deployment.yaml", "- name: rest\n", "- name: http\n", "targetPort 'rest'"),
    "configmap key": ("base/kustomization.yaml", "- fedcore.toml", "- settings.toml=fedcore.toml", "has no key 'fedcore.toml'"),
    "toml key": ("base/fedcore.toml", "min_clients = 2", "min_client = 2", "does not load"),
    "toml port": ("base/fedcore.toml", "grpc_port = 8081", "grpc_port = 9091", "grpc_port=9091"),
    "schema: unknown field": ("base/server-deployment.yaml", "readinessProbe:", "readinesProbe:", "readinesProbe"),
    "schema: wrong type": ("base/client-statefulset.yaml", "podManagementPolicy: Parallel",
                           "podManagementPolicy: [Parallel]", "podManagementPolicy"),
}


@pytest.fixture
def k8s_copy(tmp_path: Path) -> Iterator[Path]:
    dst = tmp_path / "k8s"
    shutil.copytree(K8S, dst)
    yield dst


def all_findings(k8s_root: Path, overlay: str = "dev") -> list[str]:
    try:
        text = render(k8s_root / "overlays" / overlay)
    except ManifestError as exc:
        return [str(exc)]
    docs = load_docs(text)
    try:
        import kubernetes_validate as kv
    except ImportError:  # the schema mutations skip on their own; the contract ones still run
        return contract_findings(docs)
    return contract_findings(docs) + [f for v in (OLDEST_K8S, kv.latest_version()) for f in schema_findings(docs, v)]


def test_unmutated_copy_is_clean(k8s_copy: Path) -> None:
    _need("kubectl")
    assert all_findings(k8s_copy) == []


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_mutation_is_caught(name: str, k8s_copy: Path) -> None:
    _need("kubectl")
    if name.startswith("schema"):
        schema_versions()  # skips when kubernetes-validate is missing
    rel, old, new, expected = MUTATIONS[name]
    path = k8s_copy / rel
    text = path.read_text()
    assert text.count(old) == 1, f"mutation {name!r} no longer applies to {rel}"
    path.write_text(text.replace(old, new))
    findings = all_findings(k8s_copy)
    assert any(expected in f for f in findings), f"{name}: not caught; findings: {findings}"
