"""Read rendered Kubernetes manifests (``kubectl kustomize`` output): render an overlay, check the
contracts between objects that schema validation cannot see, and turn a pod template into the
command line, environment and mounted files a kubelet would give its container.

Contracts checked (each problem is one line naming the object):
- a Service's targetPort names/numbers a containerPort of the pods it selects;
- an httpGet probe's path is a GET route of the REST app and its port a containerPort; a gRPC
  probe's port is a containerPort and its service one the gRPC health servicer reports;
- a container's ``--config FILE`` lies in a mounted ConfigMap that has that key, the TOML loads
  as fedcore settings, and its rest_port/grpc_port equal the containerPorts named rest/grpc;
- NetworkPolicies and PodDisruptionBudgets select pods that exist.
"""
from __future__ import annotations

import base64
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parent
K8S = DEPLOY / "k8s"
OVERLAYS = ("dev", "prod")
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job")
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"

Doc = dict[str, Any]


class ManifestError(ValueError):
    """The rendered manifests cannot be read as expected (missing object, bad reference)."""


def find_tool(name: str) -> str | None:
    """``name`` on PATH, else beside this Python (a venv's bin), else None."""
    return shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))


def render(kustomization_dir: Path, kubectl: str | None = None) -> str:
    """``kubectl kustomize DIR`` as YAML text; raises ManifestError with kustomize's message."""
    exe = kubectl or find_tool("kubectl")
    if exe is None:
        raise ManifestError("kubectl is not installed")
    proc = subprocess.run([exe, "kustomize", str(kustomization_dir)], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise ManifestError(f"kubectl kustomize {kustomization_dir}: {proc.stderr.strip()}")
    return str(proc.stdout)


def load_docs(text: str) -> list[Doc]:
    return [d for d in yaml.safe_load_all(text) if d]


def find(docs: Sequence[Doc], kind: str, name: str | None = None) -> Doc:
    """The one object of ``kind`` (named ``name`` when given)."""
    hits = [d for d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]
    if len(hits) != 1:
        raise ManifestError(f"expected one {kind}{' ' + name if name else ''}, found {len(hits)}")
    return hits[0]


def _ref(doc: Doc) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def workloads(docs: Sequence[Doc]) -> list[Doc]:
    return [d for d in docs if d.get("kind") in WORKLOAD_KINDS]


def pod_spec(workload: Doc) -> Doc:
    spec: Doc = workload["spec"]["template"]["spec"]
    return spec


def pod_labels(workload: Doc) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"].get("labels", {})
    return labels


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """matchLabels (or a Service's plain map) against ``labels``; matchExpressions are not used here."""
    if not selector:
        return False
    wanted = selector["matchLabels"] if "matchLabels" in selector else selector
    return all(labels.get(k) == v for k, v in wanted.items())


def selected_workloads(docs: Sequence[Doc], selector: Mapping[str, Any] | None, namespace: str | None) -> list[Doc]:
    return [w for w in workloads(docs)
            if w["metadata"].get("namespace") == namespace and selects(selector, pod_labels(w))]


def container_ports(container: Doc) -> list[Doc]:
    ports: list[Doc] = container.get("ports", [])
    return ports


def _port_matches(ref: int | str, ports: Sequence[Doc]) -> bool:
    if isinstance(ref, int):
        return any(p["containerPort"] == ref for p in ports)
    return any(p.get("name") == ref for p in ports)


# ------------------------------------------------------------------------ contracts
def check_service_ports(docs: Sequence[Doc]) -> list[str]:
    problems = []
    for svc in (d for d in docs if d.get("kind") == "Service"):
        ns = svc["metadata"].get("namespace")
        pods = selected_workloads(docs, svc["spec"].get("selector"), ns)
        if not pods:
            problems.append(f"{_ref(svc)}: its selector matches no workload")
            continue
        for port in svc["spec"].get("ports", []):
            target = port.get("targetPort", port["port"])
            for w in pods:
                ports = [p for c in pod_spec(w)["containers"] for p in container_ports(c)]
                if not _port_matches(target, ports):
                    problems.append(f"{_ref(svc)} port {port.get('name', port['port'])}: targetPort {target!r} "
                                    f"is no containerPort of {_ref(w)} ({[p.get('name') for p in ports]})")
    return problems


def check_probes(docs: Sequence[Doc], rest_get_paths: Iterable[str], grpc_services: Iterable[str]) -> list[str]:
    paths, services = set(rest_get_paths), set(grpc_services)
    problems = []
    for w in workloads(docs):
        for c in pod_spec(w)["containers"]:
            ports = container_ports(c)
            for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
                probe = c.get(kind)
                if not probe:
                    continue
                where = f"{_ref(w)} container {c['name']} {kind}"
                if "httpGet" in probe:
                    get = probe["httpGet"]
                    if get.get("path", "/") not in paths:
                        problems.append(f"{where}: path {get.get('path')!r} is not a GET route of the REST app")
                    if not _port_matches(get["port"], ports):
                        problems.append(f"{where}: port {get['port']!r} is no containerPort")
                if "grpc" in probe:
                    g = probe["grpc"]
                    if not _port_matches(int(g["port"]), ports):
                        problems.append(f"{where}: gRPC port {g['port']} is no containerPort")
                    if g.get("service", "") not in services:
                        problems.append(f"{where}: gRPC health service {g.get('service')!r} is not served "
                                        f"(served: {sorted(services)})")
                if "tcpSocket" in probe and not _port_matches(probe["tcpSocket"]["port"], ports):
                    problems.append(f"{where}: port {probe['tcpSocket']['port']!r} is no containerPort")
    return problems


def option(args: Sequence[str], flag: str) -> str | None:
    """The value of ``--flag VALUE`` or ``--flag=VALUE`` in ``args`` (None when absent)."""
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


@dataclass(frozen=True)
class MountedFile:
    """A file a container reads from a ConfigMap or Secret volume."""

    source_kind: str  # ConfigMap | Secret
    source_name: str
    key: str
    content: bytes | None  # None when the object is not in the manifests (created out of band)


def mounted_file(docs: Sequence[Doc], workload: Doc, container: Doc, path: str) -> MountedFile:
    """Which ConfigMap/Secret key the container sees at ``path`` (ManifestError if none)."""
    p = PurePosixPath(path)
    volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
    for m in container.get("volumeMounts", []):
        mount = PurePosixPath(m["mountPath"])
        if m.get("subPath") or not p.is_relative_to(mount) or p == mount:
            continue
        rel = str(p.relative_to(mount))
        vol = volumes.get(m["name"])
        if vol is None:
            raise ManifestError(f"{_ref(workload)}: volumeMount {m['name']} has no volume")
        for kind, field, name_key in (("ConfigMap", "configMap", "name"), ("Secret", "secret", "secretName")):
            if field not in vol:
                continue
            name = vol[field][name_key]
            items = vol[field].get("items")
            key = next((it["key"] for it in items if it["path"] == rel), None) if items else rel
            if key is None:
                raise ManifestError(f"{_ref(workload)}: {kind} volume {name} maps no item to {rel}")
            obj = [d for d in docs if d.get("kind") == kind and d["metadata"]["name"] == name]
            if not obj:
                return MountedFile(kind, name, key, None)
            return MountedFile(kind, name, key, object_data(obj[0]).get(key))
        raise ManifestError(f"{_ref(workload)}: {path} is on volume {m['name']}, not a ConfigMap or Secret")
    raise ManifestError(f"{_ref(workload)} container {container['name']}: no volume is mounted at {path}")


def object_data(obj: Doc) -> dict[str, bytes]:
    """A ConfigMap's or Secret's keys with their bytes (Secret data is base64)."""
    out: dict[str, bytes] = {}
    if obj["kind"] == "Secret":
        out.update({k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()})
        out.update({k: v.encode() for k, v in (obj.get("stringData") or {}).items()})
    else:
        out.update({k: v.encode() for k, v in (obj.get("data") or {}).items()})
        out.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    return out


def check_config_files(docs: Sequence[Doc], load_settings: Callable[[bytes], Any]) -> list[str]:
    """Every ``--config`` file is a ConfigMap key that loads as settings whose ports match the
    container's named ports. ``load_settings`` parses TOML bytes (raising on a bad file)."""
    problems = []
    for w in workloads(docs):
        for c in pod_spec(w)["containers"]:
            path = option([*c.get("command", []), *c.get("args", [])], "--config")
            if path is None:
                continue
            where = f"{_ref(w)} container {c['name']}"
            try:
                f = mounted_file(docs, w, c, path)
            except ManifestError as exc:
                problems.append(f"{where}: --config {path}: {exc}")
                continue
            if f.content is None:
                problems.append(f"{where}: --config {path}: {f.source_kind} {f.source_name} has no key {f.key!r}")
                continue
            try:
                settings = load_settings(f.content)
            except Exception as exc:  # any parse/validation error is the finding
                problems.append(f"{where}: --config {path} does not load: {exc}")
                continue
            for name in ("rest", "grpc"):
                declared = [p["containerPort"] for p in container_ports(c) if p.get("name") == name]
                wanted = getattr(settings, f"{name}_port")
                if declared and declared[0] != wanted:
                    problems.append(f"{where}: containerPort {name}={declared[0]} but {path} says {name}_port={wanted}")
    return problems


def check_selectors(docs: Sequence[Doc]) -> list[str]:
    problems = []
    for d in docs:
        ns = d["metadata"].get("namespace")
        if d.get("kind") == "NetworkPolicy":
            if not selected_workloads(docs, d["spec"]["podSelector"], ns):
                problems.append(f"{_ref(d)}: podSelector matches no workload")
            for rule in d["spec"].get("ingress", []):
                for peer in rule.get("from", []):
                    if "podSelector" in peer and not selected_workloads(docs, peer["podSelector"], ns):
                        problems.append(f"{_ref(d)}: ingress from {peer['podSelector']} matches no workload")
        if d.get("kind") == "PodDisruptionBudget" and not selected_workloads(docs, d["spec"]["selector"], ns):
            problems.append(f"{_ref(d)}: selector matches no workload")
    return problems


# ------------------------------------------------------------------------ pods as processes
@dataclass(frozen=True)
class PodProcess:
    """What a kubelet would run for one pod of a workload: argv after the image entrypoint (when the
    container sets no command), the container's own env with references resolved, and its mounts."""

    name: str
    command: tuple[str, ...]  # the container's command, empty = the image's ENTRYPOINT
    args: tuple[str, ...]
    env: Mapping[str, str]
    mounts: Mapping[str, str]  # mountPath -> volume key: "pvc:<claim>", "empty:<vol>", "cm:<name>", "secret:<name>"
    files: Mapping[str, bytes]  # absolute path -> content, for ConfigMap/Secret volumes in the manifests


_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined names are replaced, $$ escapes, others stay as written."""
    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))
    return _VAR.sub(sub, value)


def pod_name(workload: Doc, ordinal: int) -> str:
    name: str = workload["metadata"]["name"]
    return f"{name}-{ordinal}" if workload["kind"] == "StatefulSet" else f"{name}-0"


def _field_ref(path: str, meta: Mapping[str, Any]) -> str:
    m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if m:
        return str(meta.get(m.group(1), {})[m.group(2)])
    if path in ("metadata.name", "metadata.namespace"):
        return str(meta[path.split(".")[1]])
    raise ManifestError(f"fieldRef {path} is not resolvable offline")


def pod_process(docs: Sequence[Doc], workload: Doc, *, ordinal: int = 0, container: str | None = None) -> PodProcess:
    """The container (first, or named) of pod ``ordinal`` of ``workload`` as a process description."""
    spec = pod_spec(workload)
    c = next((x for x in spec["containers"] if container in (None, x["name"])), None)
    if c is None:
        raise ManifestError(f"{_ref(workload)} has no container {container}")
    name = pod_name(workload, ordinal)
    labels = dict(pod_labels(workload))
    if workload["kind"] == "StatefulSet":  # set by the StatefulSet controller
        labels |= {POD_INDEX_LABEL: str(ordinal), "statefulset.kubernetes.io/pod-name": name}
    meta = {"name": name, "namespace": workload["metadata"].get("namespace", "default"), "labels": labels,
            "annotations": workload["spec"]["template"]["metadata"].get("annotations", {})}
    env: dict[str, str] = {}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = expand(str(e["value"]), env)
            continue
        src = e["valueFrom"]
        if "fieldRef" in src:
            env[e["name"]] = _field_ref(src["fieldRef"]["fieldPath"], meta)
        elif "secretKeyRef" in src or "configMapKeyRef" in src:
            kind, ref = ("Secret", src["secretKeyRef"]) if "secretKeyRef" in src else ("ConfigMap", src["configMapKeyRef"])
            objs = [d for d in docs if d.get("kind") == kind and d["metadata"]["name"] == ref["name"]]
            data = object_data(objs[0]) if objs else {}
            if ref["key"] not in data:
                if ref.get("optional"):
                    continue
                raise ManifestError(f"{_ref(workload)}: env {e['name']} needs {kind} {ref['name']} key {ref['key']}")
            env[e["name"]] = data[ref["key"]].decode()
        else:
            raise ManifestError(f"{_ref(workload)}: env {e['name']} source {sorted(src)} is not resolvable offline")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounts: dict[str, str] = {}
    files: dict[str, bytes] = {}
    for m in c.get("volumeMounts", []):
        v = volumes[m["name"]]
        path = m["mountPath"]
        if "persistentVolumeClaim" in v:
            mounts[path] = f"pvc:{v['persistentVolumeClaim']['claimName']}"
        elif "emptyDir" in v:
            mounts[path] = f"empty:{m['name']}"
        elif "configMap" in v or "secret" in v:
            kind, field, key = ("ConfigMap", "configMap", "name") if "configMap" in v else ("Secret", "secret", "secretName")
            src_name = v[field][key]
            mounts[path] = f"{field}:{src_name}"
            objs = [d for d in docs if d.get("kind") == kind and d["metadata"]["name"] == src_name]
            data = object_data(objs[0]) if objs else {}
            items = v[field].get("items") or [{"key": k, "path": k} for k in data]
            for it in items:
                if it["key"] in data:
                    files[f"{path.rstrip('/')}/{it['path']}"] = data[it["key"]]
        else:
            raise ManifestError(f"{_ref(workload)}: volume {m['name']} kind is not handled offline")
    return PodProcess(
        name=name,
        command=tuple(expand(a, env) for a in c.get("command", [])),
        args=tuple(expand(a, env) for a in c.get("args", [])),
        env=env, mounts=mounts, files=files,
    )


def dockerfile_entrypoint(dockerfile: Path) -> list[str]:
    """The exec-form ENTRYPOINT of the last stage of ``dockerfile``."""
    found: list[str] | None = None
    for line in dockerfile.read_text().splitlines():
        if line.strip().upper().startswith("ENTRYPOINT"):
            found = list(yaml.safe_load(line.strip()[len("ENTRYPOINT"):].strip()))
    if not found:
        raise ManifestError(f"{dockerfile} has no exec-form ENTRYPOINT")
    return found
