"""Read deploy/ the way Docker, Kubernetes and systemd do, for the tests.

Each loader returns plain data: the mono-quant command lines (``Invocation``), the
environment variables set, the images referenced, and the worker stop settings (grace
period vs soft shutdown), so the tests can check them against the real CLI parser, the
docs/settings.md (generated from config.VARIABLES) and config.py.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
KUBERNETES = DEPLOY / "kubernetes"
SYSTEMD = DEPLOY / "systemd"
DOCKERFILE = DEPLOY / "Dockerfile"


@dataclass(frozen=True)
class Invocation:
    """One ``mono-quant`` command line found in a deploy file."""

    where: str  # e.g. "compose.yaml: services.gpu0.healthcheck"
    argv: tuple[str, ...]  # the arguments after ``mono-quant``


@dataclass
class Worker:
    """A worker definition's stop settings: its env and its grace period in seconds."""

    where: str
    env: dict[str, str]
    grace_s: float | None
    extra: dict[str, Any] = field(default_factory=dict)


def _duration(text: str | int | float) -> float:
    """compose durations (``360s``, ``6m``, ``1m30s``) or a number of seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text)
    if not parts or "".join(a + b for a, b in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


def _after_mono_quant(argv: list[str]) -> tuple[str, ...] | None:
    for i, arg in enumerate(argv):
        if Path(arg).name == "mono-quant":
            return tuple(argv[i + 1 :])
    return None


# ---------------------------------------------------------------------------- compose

def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?+]([^}]*))?\}")


def interpolate(value: Any) -> Any:
    """Compose's ``${VAR:-default}``, taking the default (what a fresh checkout gets)."""
    if isinstance(value, str):
        return _INTERPOLATION.sub(lambda m: m.group(2) or "", value)
    return value


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(interpolate(v)) for k, v in env.items()}


def uses_our_image(service: dict[str, Any]) -> bool:
    return "build" in service or str(service.get("image", "")).split(":")[0] == "mono-quant"


def compose_invocations() -> list[Invocation]:
    found = []
    for name, svc in compose()["services"].items():
        if uses_our_image(svc) and "command" in svc:
            found.append(Invocation(f"compose.yaml: services.{name}.command",
                                    tuple(svc["command"])))
        test = (svc.get("healthcheck") or {}).get("test")
        if test and test[0] in ("CMD", "CMD-SHELL"):
            argv = test[1:] if test[0] == "CMD" else shlex.split(test[1])
            rest = _after_mono_quant(list(argv))
            if rest is not None:
                found.append(Invocation(f"compose.yaml: services.{name}.healthcheck", rest))
    return found


def compose_workers() -> list[Worker]:
    return [
        Worker(f"compose.yaml: services.{name}", compose_env(svc),
               _duration(svc["stop_grace_period"]) if "stop_grace_period" in svc else None,
               {"service": svc})
        for name, svc in compose()["services"].items()
        if uses_our_image(svc) and list(svc.get("command", []))[:1] == ["worker"]
    ]


# ------------------------------------------------------------------------- kubernetes

def k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


def pod_specs() -> list[tuple[str, dict[str, Any]]]:
    """(where, pod spec) of every Deployment, Job and CronJob."""
    found = []
    for fname, doc in k8s_documents():
        kind, name = doc.get("kind"), doc.get("metadata", {}).get("name")
        spec = doc.get("spec", {})
        if kind in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
            found.append((f"{fname}: {kind}/{name}", spec["template"]["spec"]))
        elif kind == "CronJob":
            found.append((f"{fname}: {kind}/{name}",
                          spec["jobTemplate"]["spec"]["template"]["spec"]))
    return found


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return list(pod.get("initContainers", [])) + list(pod.get("containers", []))


def k8s_invocations() -> list[Invocation]:
    found = []
    for where, pod in pod_specs():
        for c in containers(pod):
            argv = list(c.get("command", [])) + list(c.get("args", []))
            rest = _after_mono_quant(argv)
            if rest is not None:
                found.append(Invocation(f"{where} container {c['name']}", rest))
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                command = ((c.get(probe) or {}).get("exec") or {}).get("command")
                rest = _after_mono_quant(list(command or []))
                if rest is not None:
                    found.append(Invocation(f"{where} container {c['name']} {probe}", rest))
    return found


def k8s_config_data() -> dict[str, dict[str, str]]:
    """{ConfigMap or Secret name: its keys and values}."""
    out = {}
    for _, doc in k8s_documents():
        if doc.get("kind") in ("ConfigMap", "Secret"):
            data = {**(doc.get("data") or {}), **(doc.get("stringData") or {})}
            out[doc["metadata"]["name"]] = {k: str(v) for k, v in data.items()}
    return out


def container_env(c: dict[str, Any]) -> dict[str, str]:
    """A container's environment: envFrom ConfigMaps/Secrets, then its own env."""
    config = k8s_config_data()
    env: dict[str, str] = {}
    for ref in c.get("envFrom", []):
        source = ref.get("configMapRef") or ref.get("secretRef")
        env.update(config[source["name"]])
    env.update({e["name"]: str(e.get("value", "")) for e in c.get("env", [])})
    return env


def k8s_workers() -> list[Worker]:
    workers = []
    for where, pod in pod_specs():
        for c in pod.get("containers", []):
            argv = list(c.get("command", [])) + list(c.get("args", []))
            if (_after_mono_quant(argv) or ("",))[0] == "worker":
                workers.append(Worker(f"{where} container {c['name']}", container_env(c),
                                      pod.get("terminationGracePeriodSeconds"),
                                      {"pod": pod, "container": c}))
    return workers


# ---------------------------------------------------------------------------- systemd

def unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A unit file as {section: [(key, value), …]} (keys may repeat, as systemd allows)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        key, value = line.split("=", 1)
        current.append((key.strip(), value.strip()))
    return sections


def units() -> list[Path]:
    return sorted(p for p in SYSTEMD.iterdir() if p.suffix in (".service", ".timer"))


def expand_specifiers(text: str, instance: str = "0") -> str:
    """The systemd specifiers our units use: %i (instance), %% (a literal %)."""
    return re.sub(r"%(.)", lambda m: {"i": instance, "%": "%"}.get(m.group(1), m.group(0)),
                  text)


def systemd_invocations() -> list[Invocation]:
    found = []
    for path in units():
        for key, value in unit(path).get("Service", []):
            if key in ("ExecStart", "ExecStartPre", "ExecStartPost", "ExecStop"):
                rest = _after_mono_quant(shlex.split(expand_specifiers(value.lstrip("-@+!"))))
                if rest is not None:
                    found.append(Invocation(f"systemd/{path.name}: {key}", rest))
    return found


def env_file(path: Path) -> dict[str, str]:
    out = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out[key] = value
    return out


def systemd_env() -> dict[str, dict[str, str]]:
    """{unit or env file: the variables it sets}."""
    out = {p.name: env_file(p) for p in SYSTEMD.glob("*.env")}
    for path in units():
        env = {}
        for key, value in unit(path).get("Service", []):
            if key == "Environment":
                for item in shlex.split(value):
                    k, v = item.split("=", 1)
                    env[k] = v
        out[path.name] = env
    return out


# -------------------------------------------------------------------------- Dockerfile

def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) pairs, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, args = line.partition(" ")
            out.append((instruction.upper(), args.strip()))
    return out


def dockerfile_env() -> dict[str, str]:
    env = {}
    for instruction, args in dockerfile():
        if instruction == "ENV":
            for item in shlex.split(args):
                k, v = item.split("=", 1)
                env[k] = v
    return env


# ------------------------------------------------------------------ README and config

def documented_settings() -> set[str]:
    """Variables in the generated settings table (docs/settings.md): those declared in
    ``mono_quant.config.VARIABLES`` (service) and ``mono_quant.quant.options`` (library)."""
    from mono_quant.config import VARIABLES
    from mono_quant.quant import options

    names = {n for v in VARIABLES for n in v.names} | {n for ns, _, _ in options.VARIABLES
                                                        for n in ns}
    return {"MONO_QUANT_" + n for n in names}


def config_reads() -> set[str]:
    """Variables src/mono_quant/config.py reads (``env.text|integer|seconds("NAME")``)."""
    source = (REPO / "src" / "mono_quant" / "config.py").read_text()
    pattern = r"""env\.(?:text|integer|seconds)\(\s*["']([A-Z_]+)["']"""
    return {"MONO_QUANT_" + n for n in re.findall(pattern, source)}
