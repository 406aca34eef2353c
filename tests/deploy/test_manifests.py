"""deploy/: every command is a real mono-quant command line, every setting is documented,
every image is ours or a real public one, and workers stop inside their grace period.

YAML-level checks of compose.yaml and the Kubernetes manifests (parsed as the tools parse
them), plus the Dockerfile and the systemd units' command lines and environment; the
systemd units themselves go through ``systemd-analyze verify`` in test_systemd.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import yaml

from mono_quant.config import Settings, get_settings
from mono_quant.scheduler.cli import build_parser
from mono_quant.worker.pinning import queues_for
from tests.deploy import deployfiles as df

ALL_INVOCATIONS = {
    "compose": df.compose_invocations,
    "kubernetes": df.k8s_invocations,
    "systemd": df.systemd_invocations,
}

#: Variables of other programs that deploy/ may set, and whose they are. Each must also be
#: named in docs/settings.md (checked below).
FOREIGN_ENV = {
    "REMAP_SIGTERM": "Celery/billiard: SIGTERM starts a cold shutdown",
    "CELERY_BROKER_URL": "the celery command line (Flower)",
    "POSTGRES_USER": "the postgres image", "POSTGRES_PASSWORD": "the postgres image",
    "POSTGRES_DB": "the postgres image",
    "PYTHONUNBUFFERED": "python", "PYTHONDONTWRITEBYTECODE": "python",
    "PIP_NO_CACHE_DIR": "pip", "PIP_DISABLE_PIP_VERSION_CHECK": "pip",
}
#: Public images deploy/ may use besides our own (repository → why).
PUBLIC_IMAGES = {"redis": "broker", "postgres": "catalog", "mher/flower": "Flower"}


def parse(inv: df.Invocation):
    try:
        return build_parser().parse_args(list(inv.argv))
    except SystemExit as e:
        pytest.fail(f"{inv.where}: `mono-quant {' '.join(inv.argv)}` is not a valid command "
                    f"line (argparse exit {e.code})")


@pytest.mark.parametrize("flavour", list(ALL_INVOCATIONS), ids=list(ALL_INVOCATIONS))
def test_every_command_line_parses_with_the_real_cli(flavour, capsys):
    invocations = ALL_INVOCATIONS[flavour]()
    expected = {"compose": {"db", "reconcile", "worker", "health", "metrics"},
                "kubernetes": {"db", "reconcile", "worker", "health", "metrics"},
                "systemd": {"worker", "reconcile"}}[flavour]
    assert {inv.argv[0] for inv in invocations} == expected  # none slipped past the loader
    for inv in invocations:
        args = parse(inv)
        if args.command == "worker":
            assert args.name and "@" in args.name, f"{inv.where}: give each node a name@host"
            if args.queues:
                queues_for(None, args.queues.split(","))  # raises on a bad device class
            if flavour != "systemd":
                # a container sees only its own GPU, as index 0
                assert args.gpu in (None, 0), inv.where
        if args.command == "health" and not args.no_worker:
            assert args.worker, f"{inv.where}: a worker health check must name its node"


def test_worker_health_checks_name_their_own_node():
    for name, svc in df.compose()["services"].items():
        if df.uses_our_image(svc) and svc.get("command", [""])[0] == "worker":
            args = build_parser().parse_args(svc["command"])
            test = svc["healthcheck"]["test"]
            health = build_parser().parse_args(test[test.index("mono-quant") + 1:])
            assert health.worker == [args.name], name
    for where, pod in df.pod_specs():
        for c in pod.get("containers", []):
            if c.get("args", [""])[0] == "worker":
                args = build_parser().parse_args(c["args"])
                probe = c["livenessProbe"]["exec"]["command"]
                assert build_parser().parse_args(probe[1:]).worker == [args.name], where


def _all_env_sets() -> dict[str, dict[str, str]]:
    sets = {f"compose {name}": df.compose_env(svc)
            for name, svc in df.compose()["services"].items()}
    for where, pod in df.pod_specs():
        for c in df.containers(pod):
            sets[f"{where} {c['name']}"] = df.container_env(c)
    for name, data in df.k8s_config_data().items():
        sets[f"kubernetes {name}"] = data
    sets.update({f"systemd {k}": v for k, v in df.systemd_env().items()})
    sets["Dockerfile"] = df.dockerfile_env()
    return sets


def test_every_variable_is_a_documented_setting_read_by_config():
    documented, read = df.documented_settings(), df.config_reads()
    assert "MONO_QUANT_BROKER_URL" in documented and "MONO_QUANT_DB_PASSWORD" in documented
    used: dict[str, str] = {}
    for where, env in _all_env_sets().items():
        for name in env:
            used.setdefault(name, where)
    # also every MONO_QUANT_* mentioned anywhere in deploy/ (comments, interpolations)
    for path in sorted(df.DEPLOY.rglob("*")):
        if path.is_file():
            for name in re.findall(r"\bMONO_QUANT_[A-Z0-9_]+", path.read_text()):
                used.setdefault(name, str(path.relative_to(df.REPO)))
    readme = (df.REPO / "docs" / "settings.md").read_text()
    for name, where in sorted(used.items()):
        if name.startswith("MONO_QUANT_"):
            assert name in documented, f"{name} ({where}) is not declared in config.VARIABLES"
            assert name in read, f"{name} ({where}) is not read by mono_quant/config.py"
        else:
            assert name in FOREIGN_ENV, f"{name} ({where}) is neither ours nor a known one"
            assert f"`{name}" in readme, f"{name} ({where}) is not mentioned in docs/settings.md"
    assert {n for n in used if n.startswith("MONO_QUANT_")} >= {
        "MONO_QUANT_SOFT_SHUTDOWN_TIMEOUT", "MONO_QUANT_STORAGE_ROOT"}


def test_compose_interpolations_are_known():
    text = df.COMPOSE.read_text()
    names = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    assert names == {"POSTGRES_PASSWORD"}
    assert "$" not in re.sub(r"\$\{[^}]+\}", "", text)  # no bare $VAR (would be interpolated)


@pytest.mark.parametrize("where", ["compose", "kubernetes", "systemd"],
                         ids=["compose", "kubernetes", "systemd"])
def test_settings_of_each_deployment_are_valid(where, monkeypatch):
    """The values deploy/ sets pass config.py's own checks (limits ordered, numbers parse)."""
    if where == "compose":
        envs = [df.compose_env(svc) for svc in df.compose()["services"].values()
                if df.uses_our_image(svc)]
    elif where == "kubernetes":
        envs = [df.container_env(c) for _, pod in df.pod_specs() for c in df.containers(pod)]
    else:
        envs = [df.systemd_env()["mono-quant.env"]]
    assert envs
    for env in envs:
        for name in [k for k in os.environ if k.startswith("MONO_QUANT_")]:
            monkeypatch.delenv(name)
        for name, value in {**df.dockerfile_env(), **env}.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        s = Settings.from_env()
        assert s.soft_time_limit < s.time_limit < s.visibility_timeout
        if where != "systemd":
            assert str(s.storage_root) == "/data/artifacts"
    get_settings.cache_clear()


def _workers():
    return df.compose_workers() + df.k8s_workers()


def test_worker_grace_periods_outlast_the_soft_shutdown():
    workers = _workers()
    assert len(df.compose_workers()) == 3 and len(df.k8s_workers()) == 3
    for w in workers:
        soft = float(w.env["MONO_QUANT_SOFT_SHUTDOWN_TIMEOUT"])
        assert soft > 0, w.where
        assert w.env.get("REMAP_SIGTERM") == "SIGQUIT", \
            f"{w.where}: without REMAP_SIGTERM=SIGQUIT, SIGTERM skips the soft shutdown"
        assert w.grace_s is not None and w.grace_s >= soft + 30, \
            f"{w.where}: grace period {w.grace_s} s must outlast the soft shutdown {soft} s"
    worker_unit = dict(df.unit(df.SYSTEMD / "mono-quant-worker@.service")["Service"])
    soft = float(df.systemd_env()["mono-quant.env"]["MONO_QUANT_SOFT_SHUTDOWN_TIMEOUT"])
    assert float(worker_unit["TimeoutStopSec"]) >= soft + 30
    assert worker_unit["KillMode"] == "mixed"  # SIGTERM to the main process, not the job child
    assert df.systemd_env()["mono-quant-worker@.service"]["REMAP_SIGTERM"] == "SIGQUIT"


def _image_repo(image: str) -> str:
    return image.rsplit(":", 1)[0] if ":" in image.split("/")[-1] else image


def test_images_are_ours_or_real_public_ones():
    seen = set()
    for name, svc in df.compose()["services"].items():
        image = svc["image"]
        seen.add(_image_repo(image))
        if "build" in svc:
            assert _image_repo(image) == "mono-quant", name
            build = svc["build"]
            assert (df.COMPOSE.parent / build["context"]).resolve() == df.REPO
            assert (df.REPO / build["dockerfile"]).resolve() == df.DOCKERFILE
        else:
            assert _image_repo(image) in PUBLIC_IMAGES, f"compose {name}: {image}"
            assert ":" in image and not image.endswith(":latest"), f"pin a tag: {image}"
    for where, pod in df.pod_specs():
        for c in df.containers(pod):
            assert _image_repo(c["image"]) == "mono-quant", f"{where}: {c['image']}"
            seen.add("mono-quant")
    kustomization = yaml.safe_load((df.KUBERNETES / "kustomization.yaml").read_text())
    assert [i["name"] for i in kustomization["images"]] == ["mono-quant"]
    assert seen == {"mono-quant", *PUBLIC_IMAGES}


def test_kubernetes_references_resolve():
    docs = df.k8s_documents()
    kinds = {(d["kind"], d["metadata"]["name"]) for _, d in docs if d["kind"] != "Kustomization"}
    kustomization = next(d for _, d in docs if d["kind"] == "Kustomization")
    files = {p.name for p in df.KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    deployments = {}
    for where, pod in df.pod_specs():
        for c in df.containers(pod):
            for ref in c.get("envFrom", []):
                kind = "ConfigMap" if "configMapRef" in ref else "Secret"
                ref_name = (ref.get("configMapRef") or ref.get("secretRef"))["name"]
                assert (kind, ref_name) in kinds, f"{where}: {kind} {ref_name} is not defined"
            for mount in c.get("volumeMounts", []):
                assert mount["name"] in {v["name"] for v in pod.get("volumes", [])}, where
        for v in pod.get("volumes", []):
            if "persistentVolumeClaim" in v:
                claim = v["persistentVolumeClaim"]["claimName"]
                assert ("PersistentVolumeClaim", claim) in kinds, where
        pod_args = [c.get("args", []) for c in pod.get("containers", [])]
        deployments[where.split("/", 1)[1]] = (pod, pod_args)
    for _, doc in docs:
        if doc["kind"] == "Deployment":
            spec = doc["spec"]
            labels = spec["template"]["metadata"]["labels"]
            assert spec["selector"]["matchLabels"].items() <= labels.items()
        if doc["kind"] == "ScaledObject":
            target = doc["spec"]["scaleTargetRef"]["name"]
            pod, pod_args = deployments[target]
            args = build_parser().parse_args(pod_args[0])
            consumed = set(args.queues.split(","))
            lists = {t["metadata"]["listName"] for t in doc["spec"]["triggers"]
                     if t["type"] == "redis"}
            assert lists and lists <= consumed, f"{target} scales on queues it does not consume"


def test_gpu_workers_hold_one_gpu_each():
    services = df.compose()["services"]
    devices = []
    for name in ("gpu0", "gpu1"):
        (reservation,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert reservation["capabilities"] == ["gpu"]
        assert reservation["device_ids"] == [name[-1]]
        devices.append(reservation["device_ids"][0])
    assert len(set(devices)) == len(devices)
    gpu_pods = [w for w in df.k8s_workers() if "--gpu" in w.extra["container"]["args"]]
    assert len(gpu_pods) == 2
    products = set()
    for w in gpu_pods:
        assert w.extra["container"]["resources"]["limits"]["nvidia.com/gpu"] == 1, w.where
        products.add(w.extra["pod"]["nodeSelector"]["nvidia.com/gpu.product"])
    assert len(products) == 2  # one Deployment per GPU class


def test_compose_redis_and_postgres_are_durable():
    services = df.compose()["services"]
    command = services["redis"]["command"]
    flags = dict(zip(command[1::2], command[2::2], strict=True))
    assert flags["--appendonly"] == "yes" and flags["--maxmemory-policy"] == "noeviction"
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])
    assert services["migrate"]["command"] == ["db", "upgrade"]
    for name, svc in services.items():
        if df.uses_our_image(svc) and name != "migrate":
            assert svc["depends_on"]["migrate"] == {
                "condition": "service_completed_successfully"}, name


def test_dockerfile_builds_this_project_as_a_non_root_user():
    steps = df.dockerfile()
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for i, a in steps if i == "ARG" and "=" in a}
    assert args["BASE_IMAGE"].startswith("python:") and args["BASE_IMAGE"].endswith("-slim")
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    makefile = (df.REPO / "Makefile").read_text()
    assert f"TORCH_SPEC ?= torch=={args['TORCH_VERSION']}" in makefile  # same torch as CI
    assert ("FROM", "${BASE_IMAGE}") in steps
    user = [a for i, a in steps if i == "USER"]
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert ("ENTRYPOINT", '["mono-quant"]') in steps
    # every package folder of pyproject.toml is copied into the image
    (line,) = [ln for ln in (df.REPO / "pyproject.toml").read_text().splitlines()
               if ln.startswith("package-dir = {")]
    package_dirs = set(re.findall(r'= "([^"]+)"', line))
    assert package_dirs == {"src", "worker", "scheduler"}
    copied = {a.split()[0] for i, a in steps if i == "COPY"}
    assert package_dirs <= copied, package_dirs - copied
    for source in copied:
        assert (df.REPO / source).exists(), source
    ignore = (df.DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert {f"!{s}" for s in copied} <= set(ignore)


def test_docker_compose_config():
    """``docker compose config`` validates compose.yaml against the Compose spec, offline."""
    if shutil.which("docker") is None:
        pytest.skip("no docker client on this machine")
    version = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if version.returncode != 0:
        reason = " ".join((version.stderr or version.stdout).strip().splitlines()[:1])
        pytest.skip("the docker client has no compose plugin (`docker compose version` "
                    f"failed: {reason}); compose.yaml is checked at the YAML level instead")
    out = subprocess.run(["docker", "compose", "-f", str(df.COMPOSE), "config", "--quiet"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
