"""The deployment files agree with each other and with the package, and `make submit` refuses
settings that would run a job against nowhere.

Dockerfile builds the image; cluster.yaml (Ray cluster launcher) and deploy/raycronjob.yaml
(KubeRay) run it; pyproject.toml pins Ray and declares the entry point. A mismatch between them
only shows on a cluster (a node without the project, a Ray version skew, an operator that drops
a field), so it is checked here.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]

# The KubeRay release the README names for deploy/raycronjob.yaml.
KUBERAY = "1.6"

# Every field of the RayCronJob CRD (ray.io/v1) in KubeRay 1.6, from
# ray-operator/config/crd/bases/ray.io_raycronjobs.yaml at tag v1.6.0, for the objects that the
# manifest writes; pod templates are Kubernetes' own PodTemplateSpec and not listed. KubeRay 1.7
# adds spec.timeZone, rayClusterSpec.{historyServerOptions, networkPolicy, tlsOptions},
# headGroupSpec.ingressOptions and workerGroupSpecs[].priority: none of them may appear here.
RAYCRONJOB_FIELDS = {
    "": {"apiVersion", "kind", "metadata", "spec"},
    "spec": {"jobTemplate", "schedule", "suspend"},
    "spec.jobTemplate": {
        "activeDeadlineSeconds", "backoffLimit", "clusterSelector", "deletionStrategy",
        "entrypoint", "entrypointNumCpus", "entrypointNumGpus", "entrypointResources", "jobId",
        "managedBy", "metadata", "preRunningDeadlineSeconds", "rayClusterSpec", "runtimeEnvYAML",
        "shutdownAfterJobFinishes", "submissionMode", "submitterConfig", "submitterPodTemplate",
        "suspend", "ttlSecondsAfterFinished",
    },
    "spec.jobTemplate.rayClusterSpec": {
        "authOptions", "autoscalerOptions", "enableInTreeAutoscaling", "gcsFaultToleranceOptions",
        "headGroupSpec", "headServiceAnnotations", "managedBy", "rayVersion", "suspend",
        "upgradeStrategy", "workerGroupSpecs",
    },
    "spec.jobTemplate.rayClusterSpec.authOptions": {"enableK8sTokenAuth", "mode", "secretName"},
    "spec.jobTemplate.rayClusterSpec.headGroupSpec": {
        "enableIngress", "headService", "labels", "rayStartParams", "resources", "serviceType",
        "template",
    },
    "spec.jobTemplate.rayClusterSpec.workerGroupSpecs[]": {
        "groupName", "idleTimeoutSeconds", "labels", "maxReplicas", "minReplicas", "numOfHosts",
        "rayStartParams", "replicas", "resources", "scaleStrategy", "suspend", "template",
    },
}
# Required by the same CRD (and by KubeRay's validation for a RayJob that creates its cluster).
RAYCRONJOB_REQUIRED = {
    "spec": {"jobTemplate", "schedule"},
    "spec.jobTemplate": {"entrypoint", "rayClusterSpec"},
    "spec.jobTemplate.rayClusterSpec": {"headGroupSpec"},
    "spec.jobTemplate.rayClusterSpec.headGroupSpec": {"template"},
    "spec.jobTemplate.rayClusterSpec.workerGroupSpecs[]": {
        "groupName", "maxReplicas", "minReplicas", "template"},
}


# Every field of the RayService CRD (ray.io/v1) in KubeRay 1.6, from
# ray-operator/config/crd/bases/ray.io_rayservices.yaml at tag v1.6.0, for the objects that
# deploy/rayservice.yaml writes (its rayClusterConfig is the RayCluster spec above). KubeRay 1.7
# adds spec.suspend, rayClusterConfig.{historyServerOptions, networkPolicy, tlsOptions} and
# headGroupSpec.ingressOptions: none of them may appear here.
_CLUSTER = "spec.jobTemplate.rayClusterSpec"
RAYSERVICE_FIELDS = {
    "": {"apiVersion", "kind", "metadata", "spec"},
    "spec": {"deploymentUnhealthySecondThreshold", "excludeHeadPodFromServeSvc", "managedBy",
             "rayClusterConfig", "rayClusterDeletionDelaySeconds", "serveConfigV2",
             "serveService", "serviceUnhealthySecondThreshold", "upgradeStrategy"},
    **{k.replace(_CLUSTER, "spec.rayClusterConfig"): v for k, v in RAYCRONJOB_FIELDS.items()
       if k.startswith(_CLUSTER)},
}
RAYSERVICE_REQUIRED = {
    "spec": {"rayClusterConfig"},
    **{k.replace(_CLUSTER, "spec.rayClusterConfig"): v for k, v in RAYCRONJOB_REQUIRED.items()
       if k.startswith(_CLUSTER)},
}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per Dockerfile instruction, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _dockerfile_labels() -> dict[str, str]:
    labels = {}
    for word, rest in _dockerfile():
        if word == "LABEL":
            labels.update(kv.split("=", 1) for kv in shlex.split(rest))
    return labels


def _base_image() -> str:
    froms = [rest for word, rest in _dockerfile() if word == "FROM"]
    assert len(froms) == 1, f"Dockerfile: expected one FROM, found {froms}"
    return froms[0]


def _raycronjob() -> dict:
    return yaml.safe_load((ROOT / "deploy" / "raycronjob.yaml").read_text())


def _pod_templates(doc: dict) -> list[tuple[str, dict]]:
    job = doc["spec"]["jobTemplate"]
    cluster = job["rayClusterSpec"]
    out = [("head", cluster["headGroupSpec"]["template"])]
    out += [(g["groupName"], g["template"]) for g in cluster.get("workerGroupSpecs", [])]
    if "submitterPodTemplate" in job:
        out.append(("submitter", job["submitterPodTemplate"]))
    return out


def _containers(doc: dict) -> list[tuple[str, dict]]:
    return [(f"{group}/{c['name']}", c) for group, tpl in _pod_templates(doc)
            for key in ("initContainers", "containers") for c in tpl["spec"].get(key, [])]


def _unknown_fields(doc: dict, fields: dict | None = None,
                    required: dict | None = None) -> list[str]:
    """Paths of fields that the KubeRay allow-list (RAYCRONJOB_FIELDS by default) does not
    have, and required fields that are missing."""
    fields = RAYCRONJOB_FIELDS if fields is None else fields
    required = RAYCRONJOB_REQUIRED if required is None else required
    problems = []

    def walk(node, path: str) -> None:
        if path in fields:
            problems.extend(f"{path}.{k}".lstrip(".") for k in node if k not in fields[path])
            problems.extend(f"{path}.{k} (required, missing)" for k in
                            required.get(path, set()) - set(node))
            for k, v in node.items():
                child = f"{path}.{k}".lstrip(".")
                if isinstance(v, list):
                    for item in v:
                        if isinstance(item, dict):
                            walk(item, child + "[]")
                elif isinstance(v, dict):
                    walk(v, child)

    walk(doc, "")
    return problems


def test_one_image_tag_in_the_dockerfile_cluster_yaml_and_raycronjob():
    image = _dockerfile_labels().get("org.opencontainers.image.ref.name")
    assert image, "Dockerfile: LABEL org.opencontainers.image.ref.name=<the image tag> is missing"
    name, _, tag = image.rpartition(":")
    version = _pyproject()["project"]["version"]
    assert tag == version, f"Dockerfile tags the image {image!r}; pyproject's version is {version}"
    assert _dockerfile_labels().get("org.opencontainers.image.version") == version

    cluster = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    assert cluster["docker"]["image"] == image, "cluster.yaml docker.image is not the Dockerfile's"

    containers = _containers(_raycronjob())
    assert {c.split("/")[0] for c, _ in containers} >= {"head", "gpu"}, containers
    wrong = {where: c["image"] for where, c in containers if c["image"] != image}
    assert not wrong, f"deploy/raycronjob.yaml containers not running {image}: {wrong}"


def test_ray_and_python_versions_agree_across_dockerfile_raycronjob_and_pyproject():
    base = _base_image()
    m = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-gpu", base)
    assert m, f"Dockerfile FROM {base!r} is not a rayproject/ray:<version>-py<xy>-gpu image"
    ray_version, python = m.group(1), f"{m.group(2)}.{m.group(3)}"

    pins = [Requirement(d) for d in _pyproject()["project"]["dependencies"]]
    ray_pin = next(r for r in pins if r.name == "ray")
    assert ray_pin.specifier.contains(ray_version), (
        f"Dockerfile's Ray {ray_version} does not satisfy pyproject's {ray_pin}")
    assert {"train", "data", "default"} <= ray_pin.extras, ray_pin  # Ray Jobs need `default`

    ray_cluster = _raycronjob()["spec"]["jobTemplate"]["rayClusterSpec"]
    assert ray_cluster["rayVersion"] == ray_version, (
        f"raycronjob rayVersion {ray_cluster['rayVersion']} != Dockerfile's Ray {ray_version}")

    requires = SpecifierSet(_pyproject()["project"]["requires-python"])
    assert requires.contains(python), f"Dockerfile's Python {python} is not {requires}"


def test_the_dockerfile_installs_the_project_and_leaves_the_container_command_alone():
    steps = _dockerfile()
    runs = " ".join(rest for word, rest in steps if word == "RUN")
    assert "pip install" in runs and "pyproject.toml" in runs, "dependencies from pyproject"
    assert re.search(r"pip install [^&;]*/tmp/visual-dpo", runs), "the project itself"
    if "gpu" in _pyproject()["project"].get("optional-dependencies", {}):
        assert "get('gpu'" in runs, "the image is for GPU nodes: install the `gpu` extra too"
    assert " -e " not in runs and "--editable" not in runs, "an editable install needs the source"
    # The cluster launcher starts the image as `docker run ... IMAGE bash`, KubeRay sets the
    # container command to `ray start ...`: an ENTRYPOINT would turn both into its arguments.
    assert not [rest for word, rest in steps if word == "ENTRYPOINT"]

    ignored = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")]
    makefile = (ROOT / "Makefile").read_text()
    job_excludes = re.search(r"^JOB_EXCLUDES = \[(.*)\]$", makefile, re.M).group(1)
    missing = [p for p in re.findall(r'"([^"]+)"', job_excludes) if p not in ignored]
    assert not missing, f".dockerignore lets local state into the image: {missing}"
    needed = ["pyproject.toml", "README.md", "pipelines", "components"]
    assert not [n for n in needed if any(fnmatch.fnmatch(n, p) for p in ignored)], ignored


def test_the_raycronjob_entrypoint_is_a_command_the_installed_package_provides():
    argv = shlex.split(_raycronjob()["spec"]["jobTemplate"]["entrypoint"])
    project = _pyproject()
    if argv[0] == "visual-dpo":
        scripts = project["project"].get("scripts", {})
        assert scripts.get("visual-dpo") == "pipelines.__main__:cli", (
            "the entrypoint runs `visual-dpo`; pyproject [project.scripts] must declare it")
    else:
        assert argv[:3] == ["python", "-m", "pipelines"], argv
    assert argv[argv.index("run") + 1] in ("image", "video"), argv
    # The image installs the package (no source tree, no working_dir): `pipelines` must be one
    # of the packages pyproject installs, with a __main__.
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    assert any(fnmatch.fnmatch("pipelines", pat) for pat in include), include
    assert (ROOT / "pipelines" / "__main__.py").is_file()


def test_the_raycronjob_uses_only_fields_of_the_named_kuberay_release():
    doc = _raycronjob()
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayCronJob")
    problems = _unknown_fields(doc)
    assert not problems, f"not in the KubeRay {KUBERAY} RayCronJob CRD: {problems}"

    job = doc["spec"]["jobTemplate"]
    cluster = job["rayClusterSpec"]
    # CRD: rayStartParams is a map of strings (an unquoted `num-cpus: 0` is rejected).
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        params = group.get("rayStartParams", {})
        assert all(isinstance(v, str) for v in params.values()), params
    for g in cluster["workerGroupSpecs"]:
        assert g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"], g
    assert cluster.get("authOptions", {}).get("mode", "token") in ("disabled", "token")
    if job.get("ttlSecondsAfterFinished", 0) > 0:  # KubeRay's RayJob validation
        assert job["shutdownAfterJobFinishes"], "a TTL needs shutdownAfterJobFinishes: true"
    # KubeRay names each RayJob <cronjob>-<5 chars> and caps RayJob names at 47 (DNS-1035).
    name = doc["metadata"]["name"]
    assert len(name) <= 41 and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), name


def test_the_field_check_rejects_a_field_the_release_lacks():
    doc = _raycronjob()
    doc["spec"]["timeZone"] = "UTC"  # KubeRay 1.7's; a 1.6 operator prunes it silently
    doc["spec"]["jobTemplate"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplica"] = 4
    del doc["spec"]["jobTemplate"]["rayClusterSpec"]["headGroupSpec"]["template"]
    assert sorted(_unknown_fields(doc)) == [
        "spec.jobTemplate.rayClusterSpec.headGroupSpec.template (required, missing)",
        "spec.jobTemplate.rayClusterSpec.workerGroupSpecs[].maxReplica",
        "spec.timeZone",
    ]


# `make submit`: the real target, through make, with this interpreter's venv. `-o` keeps make
# from re-running `install` when pyproject.toml is newer than the venv's stamp.

def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _make_submit(*assignments: str) -> subprocess.CompletedProcess:
    venv = Path(sys.prefix)
    if not shutil.which("make") or not (venv / "bin" / "ray").exists():
        pytest.skip("needs make and a venv with ray (run with .venv/bin/python -m pytest)")
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "TRAIN", "EVAL", "DATA", "CLUSTER", "ARGS",
                        "RAY_ADDRESS", "MODALITY", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    cmd = ["make", "-s", "-o", f"{venv}/.installed-stamp", "submit", f"VENV={venv}",
           f"RAY_ADDRESS=http://127.0.0.1:{_closed_port()}", *assignments]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


RAY_RAN = "Failed to connect to Ray at address"
REMOTE = ("TRAIN=s3://bucket/pairs/train/", "EVAL=s3://bucket/pairs/eval/")


@pytest.mark.parametrize("uri, says", [
    (None, "MLFLOW_TRACKING_URI is not set"),
    ("sqlite:///x.db", "MLFLOW_TRACKING_URI is 'sqlite:///x.db', a local store"),
    ("file:./mlruns", "MLFLOW_TRACKING_URI is 'file:./mlruns', a local store"),
    ("mlruns", "MLFLOW_TRACKING_URI is 'mlruns', a local store"),
])
def test_make_submit_refuses_a_local_tracking_store_before_submitting(uri, says):
    p = _make_submit(*REMOTE, *([f"MLFLOW_TRACKING_URI={uri}"] if uri else []))
    assert p.returncode != 0
    assert says in p.stderr, p.stderr
    assert RAY_RAN not in p.stdout + p.stderr, "ray job submit ran"


@pytest.mark.parametrize("paths, says", [
    ((), "TRAIN=data/sample/train is under 'data', which the job upload leaves out"),
    (("TRAIN=outputs/prepared", "EVAL=s3://bucket/pairs/eval/"),
     "TRAIN=outputs/prepared is under 'outputs'"),
    (("TRAIN=s3://bucket/pairs/train/", "EVAL=benchmarks/out/pairs"),
     "EVAL=benchmarks/out/pairs is under 'benchmarks/out'"),
    (("TRAIN=../pairs", "EVAL=s3://bucket/pairs/eval/"),
     "TRAIN=../pairs is outside this checkout"),
])
def test_make_submit_refuses_local_data_that_the_upload_leaves_out(paths, says):
    p = _make_submit("MLFLOW_TRACKING_URI=http://mlflow:5000", *paths)
    assert p.returncode != 0
    assert says in p.stderr, p.stderr
    assert RAY_RAN not in p.stdout + p.stderr, "ray job submit ran"


def test_make_submit_with_a_server_and_uploaded_or_remote_data_goes_on_to_ray():
    # tests/ is uploaded with the job (not excluded), so a relative path there is fine; the
    # submission itself then fails only because RAY_ADDRESS points at a closed port.
    p = _make_submit("MLFLOW_TRACKING_URI=http://mlflow:5000",
                     "TRAIN=s3://bucket/pairs/train/", "EVAL=tests")
    assert "make submit:" not in p.stderr, p.stderr
    assert RAY_RAN in p.stdout + p.stderr, p.stdout + p.stderr
    assert p.returncode != 0


def _custom_resources(group: dict) -> dict[str, int]:
    """A group's custom resources as the KubeRay autoscaler reads them (so it scales the group
    for work that asks for one): rayStartParams.resources in KubeRay's quoted-JSON format."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _get_custom_resources

    return _get_custom_resources(group.get("resources", {}), group.get("rayStartParams", {}),
                                 group.get("groupName", "head"))


def test_the_raycronjob_places_decode_and_training_on_groups_that_declare_their_resources():
    job = _raycronjob()["spec"]["jobTemplate"]
    cluster = job["rayClusterSpec"]
    overrides = dict(a.split("=", 1) for a in shlex.split(job["entrypoint"]) if "=" in a
                     and not a.startswith("-"))
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}

    def gpus(group: dict) -> int:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        return int(limits.get("nvidia.com/gpu", 0))

    decode = overrides.get("preprocess.node_resource")
    train = overrides.get("train.node_resource")
    assert decode and train, overrides
    decode_groups = [n for n, g in groups.items() if decode in _custom_resources(g)]
    train_groups = [n for n, g in groups.items() if train in _custom_resources(g)]
    assert decode_groups and all(gpus(groups[n]) == 0 for n in decode_groups), decode_groups
    assert train_groups and all(gpus(groups[n]) >= 1 for n in train_groups), train_groups
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert not _custom_resources(cluster["headGroupSpec"]), "no work is placed on the head"
    # The decode pool fits the decode groups at their largest (a fixed-size actor pool that
    # cannot start waits forever).
    actors = int(overrides.get("preprocess.actors", 1))
    cpus = sum(int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
               * g["maxReplicas"] for n, g in groups.items() if n in decode_groups)
    assert actors < cpus, (actors, cpus)


def test_every_raycronjob_pod_gets_the_s3_credentials_from_a_secret():
    # The driver (head), decode actors (cpu) and training workers (gpu) all read or write
    # s3://: each container takes the keys from one Secret, never a literal value.
    for where, c in _containers(_raycronjob()):
        if where.startswith("submitter"):
            continue  # it only submits the job
        env = {e["name"]: e for e in c.get("env", [])}
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
            assert name in env, f"{where}: no {name}"
            ref = env[name].get("valueFrom", {}).get("secretKeyRef")
            assert ref and "value" not in env[name], f"{where}: {name} is not from a Secret"
            assert ref["key"] == name, ref
        assert env["AWS_ENDPOINT_URL"]["valueFrom"]["secretKeyRef"].get("optional") is True
        secrets = {e["valueFrom"]["secretKeyRef"]["name"] for e in env.values()
                   if "secretKeyRef" in e.get("valueFrom", {})}
        assert len(secrets) == 1, secrets


# deploy/rayservice.yaml: the reward service (components/serving) on KubeRay.

def _rayservice() -> dict:
    return yaml.safe_load((ROOT / "deploy" / "rayservice.yaml").read_text())


def test_the_rayservice_uses_only_fields_of_the_named_kuberay_release():
    doc = _rayservice()
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayService")
    problems = _unknown_fields(doc, RAYSERVICE_FIELDS, RAYSERVICE_REQUIRED)
    assert not problems, f"not in the KubeRay {KUBERAY} RayService CRD: {problems}"
    cluster = doc["spec"]["rayClusterConfig"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        params = group.get("rayStartParams", {})
        assert all(isinstance(v, str) for v in params.values()), params
    for g in cluster["workerGroupSpecs"]:
        assert g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"], g
    cronjob_cluster = _raycronjob()["spec"]["jobTemplate"]["rayClusterSpec"]
    assert cluster["rayVersion"] == cronjob_cluster["rayVersion"]
    image = _dockerfile_labels()["org.opencontainers.image.ref.name"]
    templates = [cluster["headGroupSpec"]["template"],
                 *[g["template"] for g in cluster["workerGroupSpecs"]]]
    assert {c["image"] for t in templates for c in t["spec"]["containers"]} == {image}
    # Serve's HAProxy ingress on every pod (read by Serve's controller, which may run on any
    # pod after a restart), as `visual-dpo serve` sets it on a local cluster.
    from components.serving.service import HAPROXY_ENV

    for t in templates:
        for c in t["spec"]["containers"]:
            assert {e["name"]: e["value"] for e in c.get("env", [])}.get(HAPROXY_ENV) == "1", c


def test_the_rayservice_field_check_rejects_a_field_the_release_lacks():
    doc = _rayservice()
    doc["spec"]["suspend"] = True  # KubeRay 1.7's
    doc["spec"]["serveConfig"] = {}  # the v1alpha1 field, gone from v1
    del doc["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
    assert sorted(_unknown_fields(doc, RAYSERVICE_FIELDS, RAYSERVICE_REQUIRED)) == [
        "spec.rayClusterConfig.headGroupSpec.template (required, missing)",
        "spec.serveConfig", "spec.suspend"]


def test_the_rayservice_serve_config_builds_the_application_it_names():
    """serveConfigV2 as Ray 2.60's Serve reads it: its schema, the import path resolved and
    called with the args (as the Serve controller does), the settings valid, and each replica's
    resources within one pod of a worker group."""
    from ray._common.utils import import_attr
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve.deployment import Application
    from ray.serve.schema import ServeDeploySchema

    from components.serving.settings import ServeSettings

    doc = _rayservice()
    config = ServeDeploySchema.model_validate(yaml.safe_load(doc["spec"]["serveConfigV2"]))
    assert len(config.applications) == 1
    app = config.applications[0]
    built = call_user_app_builder_with_args_if_necessary(import_attr(app.import_path), app.args)
    assert isinstance(built, Application)
    settings = ServeSettings.from_dict(app.args["settings"])
    assert settings.problems() == []
    assert "MLFLOW_TRACKING_URI" in app.runtime_env["env_vars"]
    assert "@" in app.args["model"]  # follows an alias

    cluster = doc["spec"]["rayClusterConfig"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    sc = settings.scaling
    fits = []
    for g in cluster["workerGroupSpecs"]:
        limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
        if int(limits.get("nvidia.com/gpu", 0)) >= sc.num_gpus and int(limits["cpu"]) >= sc.num_cpus:
            fits.append(g["maxReplicas"])
    assert fits and sc.max_replicas <= sum(fits), (sc, fits)
    port = config.http_options.port
    for t in [cluster["headGroupSpec"]["template"],
              *[g["template"] for g in cluster["workerGroupSpecs"]]]:
        ports = {p["name"]: p["containerPort"] for p in t["spec"]["containers"][0]["ports"]}
        assert ports.get("serve") == port, ports
