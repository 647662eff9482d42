"""Every manifest in infra/k8s/ against the real KubeRay CRDs (strict walk, CEL, operator rules) and Kubernetes' own
schemas, plus the deployment policies of docs/infra.md: pins, token auth, private dashboard, secrets, deadlines."""

from __future__ import annotations

import copy
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from infra import kuberay_rules, slot_rules
from infra.validate import validate_builtin, validate_custom_resource, validate_documents
from tests.infra.conftest import (
    INFRA,
    K8S_MANIFESTS,
    REPO_ROOT,
    constraint_pin,
    load_documents,
    manifest,
    project_version,
    pyproject_pin,
)

RAY_KINDS = {"RayCluster", "RayJob", "RayCronJob"}
IMAGE = re.compile(
    r"^(?P<repo>[a-z0-9./-]+/rsvheat):(?P<version>[0-9.]+)-ray(?P<ray>[0-9.]+)-py311-(?P<variant>cpu|gpu)$"
)
SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL", re.IGNORECASE)
README = (INFRA / "README.md").read_text()


def ray_documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in K8S_MANIFESTS:
        for document in load_documents(path):
            if document["kind"] in RAY_KINDS:
                yield path, document


def cluster_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every RayCluster spec: the RayCluster's own and those embedded in RayJobs and the RayCronJob."""
    for path, document in ray_documents():
        spec = document["spec"]
        where = f"{path.name} {document['kind']}"
        if document["kind"] == "RayCluster":
            yield where, spec
        elif document["kind"] == "RayJob" and "rayClusterSpec" in spec:
            yield where, spec["rayClusterSpec"]
        elif document["kind"] == "RayCronJob":
            yield where, spec["jobTemplate"]["rayClusterSpec"]


def job_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every RayJob spec, including the RayCronJob's template."""
    for path, document in ray_documents():
        if document["kind"] == "RayJob":
            yield path.name, document["spec"]
        elif document["kind"] == "RayCronJob":
            yield path.name, document["spec"]["jobTemplate"]


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod spec in every manifest (Ray groups and the CronJob's pod)."""
    for where, spec in cluster_specs():
        yield f"{where} head", spec["headGroupSpec"]["template"]["spec"]
        for group in spec.get("workerGroupSpecs", []):
            yield f"{where} {group['groupName']}", group["template"]["spec"]
    cron = manifest("cronjob-ingest.yaml", "CronJob")
    yield "cronjob-ingest.yaml CronJob", cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]


# --- schemas -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", K8S_MANIFESTS, ids=lambda path: path.name)
def test_every_manifest_is_valid(path: Path, crd_schemas: Mapping[str, Mapping[str, Any]]) -> None:
    documents = load_documents(path)
    assert documents, f"{path} holds no document"
    assert validate_documents(documents, crd_schemas) == []


def test_the_manifests_cover_every_kind_the_deployment_needs() -> None:
    kinds = sorted(document["kind"] for path in K8S_MANIFESTS for document in load_documents(path))
    assert kinds == sorted(
        ["RayCluster", "RayJob", "RayJob", "RayJob", "RayCronJob", "ServiceAccount", "Role", "RoleBinding", "CronJob"]
    )


def _schema_keys(value: Any, schema: Mapping[str, Any], path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Paths of every key that the schema names in `properties` (renaming any of them must be caught)."""
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for key, item in value.items():
            if key in properties:
                yield (*path, key)
                yield from _schema_keys(item, properties[key], (*path, key))
            elif isinstance(schema.get("additionalProperties"), dict):
                yield from _schema_keys(item, schema["additionalProperties"], (*path, key))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            yield from _schema_keys(item, schema["items"], (*path, index))


def _misspell(document: dict[str, Any], path: tuple[Any, ...]) -> dict[str, Any]:
    mutated = copy.deepcopy(document)
    parent: Any = mutated
    for step in path[:-1]:
        parent = parent[step]
    parent[f"{path[-1]}x"] = parent.pop(path[-1])
    return mutated


@pytest.mark.parametrize(
    "path",
    [p for p in K8S_MANIFESTS if any(d["kind"] in RAY_KINDS for d in load_documents(p))],
    ids=lambda path: path.name,
)
def test_misspelling_any_schema_field_is_caught(path: Path, crd_schemas: Mapping[str, Mapping[str, Any]]) -> None:
    for document in load_documents(path):
        if document["kind"] not in RAY_KINDS:
            continue
        schema = crd_schemas[document["kind"]]
        body = {key: value for key, value in document.items() if key != "metadata"}
        key_paths = list(_schema_keys(body, schema))
        assert len(key_paths) > 50, f"{path.name}: too few schema keys found ({len(key_paths)}); is the walk broken?"
        for key_path in key_paths:
            violations = validate_custom_resource(_misspell(document, key_path), schema)
            dotted = ".".join(str(step) for step in key_path[:-1])
            wanted = f"{dotted}.{key_path[-1]}x".lstrip(".")
            assert any(
                v.path.replace("[", ".").replace("]", "") == wanted and "unknown field" in v.message for v in violations
            ), f"{path.name}: renaming {wanted[:-1]} was not caught: {violations}"


def test_a_misspelled_rayjob_field_names_the_right_one(crd_schemas: Mapping[str, Mapping[str, Any]]) -> None:
    document = manifest("rayjob-pretrain.yaml")
    document["spec"]["shutdownAfterJobFinish"] = document["spec"].pop("shutdownAfterJobFinishes")
    messages = [str(v) for v in validate_custom_resource(document, crd_schemas["RayJob"])]
    assert "did you mean 'shutdownAfterJobFinishes'?" in messages[0]


def test_metadata_is_checked_too(crd_schemas: Mapping[str, Mapping[str, Any]]) -> None:
    document = manifest("raycluster.yaml")
    document["metadata"]["lables"] = document["metadata"].pop("labels")
    document["metadata"]["name"] = "Rsvheat_Cluster"
    messages = [str(v) for v in validate_custom_resource(document, crd_schemas["RayCluster"])]
    assert any("metadata.lables: unknown" in m for m in messages)
    assert any("not a DNS-1035 label" in m for m in messages)


@pytest.mark.parametrize("version", ["1.29.0", "1.37.0"])
def test_builtin_kinds_pass_kubernetes_strict_schemas_and_catch_a_misspelling(version: str) -> None:
    cron = manifest("cronjob-ingest.yaml", "CronJob")
    assert validate_builtin(cron, version) == []
    cron["spec"]["concurrencyPolicyy"] = cron["spec"].pop("concurrencyPolicy")
    assert validate_builtin(cron, version), "kubernetes-validate --strict missed a misspelled CronJob field"


# --- CEL rules we rely on ------------------------------------------------------------------------------------------


def _cron_violations(crd_schemas: Mapping[str, Mapping[str, Any]], change: Any) -> list[str]:
    document = manifest("raycronjob-ingest.yaml")
    change(document["spec"]["jobTemplate"])
    return [str(v) for v in validate_custom_resource(document, crd_schemas["RayCronJob"])]


def test_cel_deletion_strategy_rejects_legacy_policies_beside_rules(
    crd_schemas: Mapping[str, Mapping[str, Any]],
) -> None:
    def both(template: dict[str, Any]) -> None:
        template["deletionStrategy"]["onSuccess"] = {"policy": "DeleteCluster"}
        template["deletionStrategy"]["onFailure"] = {"policy": "DeleteCluster"}

    messages = _cron_violations(crd_schemas, both)
    assert any("cannot be used together" in m and "(CEL:" in m for m in messages), messages


def test_cel_deletion_strategy_needs_both_legacy_policies_or_rules(
    crd_schemas: Mapping[str, Mapping[str, Any]],
) -> None:
    def only_success(template: dict[str, Any]) -> None:
        template["deletionStrategy"] = {"onSuccess": {"policy": "DeleteCluster"}}

    messages = _cron_violations(crd_schemas, only_success)
    assert any("requires either BOTH onSuccess and onFailure" in m for m in messages), messages


@pytest.mark.parametrize(
    ("condition", "fragment"),
    [
        ({"ttlSeconds": 0}, "requires either the JobStatus or the JobDeploymentStatus"),
        ({"jobStatus": "FAILED", "jobDeploymentStatus": "Failed"}, "cannot be used together within the same deletion"),
    ],
)
def test_cel_deletion_conditions(
    condition: dict[str, Any], fragment: str, crd_schemas: Mapping[str, Mapping[str, Any]]
) -> None:
    def change(template: dict[str, Any]) -> None:
        template["deletionStrategy"]["deletionRules"][0]["condition"] = condition

    messages = _cron_violations(crd_schemas, change)
    assert any(fragment in m for m in messages), messages


def test_cel_managed_by_takes_only_the_two_known_controllers(crd_schemas: Mapping[str, Mapping[str, Any]]) -> None:
    def change(template: dict[str, Any]) -> None:
        template["managedBy"] = "my-operator"

    assert any("managedBy field value must be either" in m for m in _cron_violations(crd_schemas, change))
    assert _cron_violations(crd_schemas, lambda t: t.update(managedBy="ray.io/kuberay-operator")) == []


# --- operator-side rules -------------------------------------------------------------------------------------------


def test_operator_rules_catch_what_the_schema_cannot() -> None:
    spec = copy.deepcopy(manifest("rayjob-pretrain.yaml")["spec"])
    spec["shutdownAfterJobFinishes"] = False
    spec["rayClusterSpec"]["rayVersion"] = "2.50.0"
    spec["rayClusterSpec"]["workerGroupSpecs"][0]["minReplicas"] = 9
    spec["runtimeEnvYAML"] = "- not\n- a mapping\n"
    messages = [str(v) for v in kuberay_rules.check_rayjob_spec(spec)]
    for fragment in (
        "ttlSecondsAfterFinished: needs shutdownAfterJobFinishes",
        "token auth needs Ray 2.52.0",
        "minReplicas 9 > maxReplicas 8",
        "must be a YAML mapping",
    ):
        assert any(fragment in m for m in messages), (fragment, messages)


@pytest.mark.parametrize("schedule", ["0 */6 * * *", "@daily", "15 2 * * mon-fri", "0 0 1 jan,jul *"])
def test_valid_cron_schedules(schedule: str) -> None:
    assert kuberay_rules.check_cron_schedule(schedule) == []


@pytest.mark.parametrize("schedule", ["0 */6 * *", "61 * * * *", "CRON_TZ=UTC 0 * * * *", "0 0 * * 9", "@often"])
def test_invalid_cron_schedules(schedule: str) -> None:
    assert kuberay_rules.check_cron_schedule(schedule)


def test_the_deletion_rule_ttls_must_not_decrease() -> None:
    spec = copy.deepcopy(manifest("raycronjob-ingest.yaml")["spec"]["jobTemplate"])
    spec["deletionStrategy"]["deletionRules"][1]["condition"]["ttlSeconds"] = 0
    spec["deletionStrategy"]["deletionRules"][0]["condition"]["ttlSeconds"] = 60
    assert any("must not decrease" in str(v) for v in kuberay_rules.check_rayjob_spec(spec))


# --- pins ----------------------------------------------------------------------------------------------------------


def test_ray_pins_agree_everywhere() -> None:
    ray = pyproject_pin("ray")
    assert constraint_pin("ray") == ray
    versions = {where: spec["rayVersion"] for where, spec in cluster_specs()}
    assert set(versions.values()) == {ray}, versions


def _images() -> Iterator[tuple[str, dict[str, Any]]]:
    for where, pod in pod_specs():
        for container in pod["containers"]:
            yield where, container


def test_every_image_is_the_project_image_at_the_pinned_versions() -> None:
    for where, container in _images():
        match = IMAGE.match(container["image"])
        assert match, f"{where}: {container['image']} is not <registry>/rsvheat:<version>-ray<ray>-py311-<variant>"
        assert match["version"] == project_version(), where
        assert match["ray"] == pyproject_pin("ray"), where
        gpus = str(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
        assert (match["variant"] == "gpu") == (gpus != "0"), f"{where}: GPU image iff the pod asks for a GPU"
        assert not container["image"].endswith(":latest")


# --- security ------------------------------------------------------------------------------------------------------


def test_token_auth_is_on_for_every_cluster_with_the_documented_secret() -> None:
    for where, spec in cluster_specs():
        assert spec["authOptions"] == {"mode": "token", "secretName": "rsvheat-ray-token"}, where
    assert "create secret generic rsvheat-ray-token" in README and "auth_token=" in README


def test_the_dashboard_is_never_exposed_outside_the_cluster() -> None:
    for where, spec in cluster_specs():
        head = spec["headGroupSpec"]
        assert head.get("serviceType", "ClusterIP") == "ClusterIP", where
        assert head.get("enableIngress", False) is False, where
        assert "headService" not in head and "ingressOptions" not in head, where


def test_no_credential_is_inline() -> None:
    for where, pod in pod_specs():
        for container in pod["containers"]:
            for variable in container.get("env", []):
                if SECRET_NAME.search(variable["name"]):
                    assert "secretKeyRef" in variable.get("valueFrom", {}), f"{where}: {variable['name']} inline"
                assert not re.search(r"AKIA[0-9A-Z]{16}", str(variable.get("value", ""))), where
    for where, job in job_specs():
        import yaml

        env_vars = (yaml.safe_load(job["runtimeEnvYAML"]) or {}).get("env_vars", {})
        assert not [name for name in env_vars if SECRET_NAME.search(name)], f"{where}: secrets in runtimeEnvYAML"


def test_ray_pods_read_storage_credentials_from_the_documented_secret() -> None:
    for where, spec in cluster_specs():
        groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
        for group in groups:
            container = group["template"]["spec"]["containers"][0]
            assert {"secretRef": {"name": "rsvheat-s3"}} in container.get("envFrom", []), where
    assert "create secret generic rsvheat-s3" in README


def test_every_pod_runs_as_non_root_without_privilege_escalation() -> None:
    for where, pod in pod_specs():
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["runAsUser"] != 0, where
        for container in pod["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, where


# --- cluster shape and jobs ----------------------------------------------------------------------------------------


def test_the_raycluster_has_cpu_ingest_and_autoscaled_gpu_groups() -> None:
    spec = manifest("raycluster.yaml")["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    groups = {group["groupName"]: group for group in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu-ingest", "gpu"}
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]
    assert (
        int(gpu["limits"]["nvidia.com/gpu"]) >= 1
        and gpu["limits"]["nvidia.com/gpu"] == gpu["requests"]["nvidia.com/gpu"]
    )
    assert "nvidia.com/gpu" not in groups["cpu-ingest"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    for group in groups.values():
        assert 0 <= group["minReplicas"] <= group["maxReplicas"] and group["maxReplicas"] > 0


def test_every_rayjob_has_deadlines_cleanup_and_bounded_submitter_retries() -> None:
    for where, job in job_specs():
        assert job["activeDeadlineSeconds"] > 0 and job["preRunningDeadlineSeconds"] > 0, where
        assert job["submitterConfig"]["backoffLimit"] >= 0, where
        assert job["backoffLimit"] == 0, where
        assert job.get("shutdownAfterJobFinishes") is True or job["deletionStrategy"]["deletionRules"], where
        assert "jobId" not in job, f"{where}: a fixed jobId collides on the second run"
    for name in ("rayjob-pretrain.yaml", "rayjob-finetune.yaml"):
        assert manifest(name)["spec"]["shutdownAfterJobFinishes"] is True


def _entrypoint(spec: Mapping[str, Any]) -> list[str]:
    words = shlex.split(spec["entrypoint"])
    assert words[0] == "python" and words[1].startswith("jobs/") and words[1].endswith(".py"), words
    return words


@pytest.mark.parametrize(
    ("name", "script", "flags"),
    [
        ("rayjob-pretrain.yaml", "jobs/pretrain.py", ["--config", "--data", "--storage-path", "--run-name"]),
        ("rayjob-finetune.yaml", "jobs/finetune.py", ["--task", "--data", "--pretrained", "--output"]),
        ("rayjob-ingest.yaml", "jobs/ingest.py",
         ["--config", "--stac-api", "--since", "--output", "--workers", "--schedule-slot", "--lease-wait"]),
    ],
)
def test_entrypoints_run_the_job_clis_with_flags_they_accept(name: str, script: str, flags: list[str]) -> None:
    words = _entrypoint(manifest(name)["spec"])
    assert words[1] == script and [w for w in words if w.startswith("--")] == flags
    for word, following in zip(words, [*words[1:], ""], strict=True):
        if word == "--config":
            assert (REPO_ROOT / following).is_file() or not (REPO_ROOT / script).is_file(), following
    if not (REPO_ROOT / script).is_file():
        pytest.skip(f"{script} is not in this checkout yet (another branch adds it); its flags are checked once it is")
    result = subprocess.run(
        [sys.executable, script, "--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for flag in flags:
        assert re.search(rf"(^|[\s,\[]){re.escape(flag)}\b", result.stdout), f"{script} --help does not list {flag}"


def test_scheduled_ingest_is_the_same_job_under_both_schedulers() -> None:
    cleanup = {"deletionStrategy", "shutdownAfterJobFinishes", "ttlSecondsAfterFinished"}
    template = {k: v for k, v in manifest("raycronjob-ingest.yaml")["spec"]["jobTemplate"].items() if k not in cleanup}
    rayjob = {k: v for k, v in manifest("rayjob-ingest.yaml")["spec"].items() if k not in cleanup}
    assert template == rayjob
    assert "--since auto" in rayjob["entrypoint"]
    cron = manifest("cronjob-ingest.yaml", "CronJob")["spec"]
    assert cron["schedule"] == manifest("raycronjob-ingest.yaml")["spec"]["schedule"]
    assert cron["timeZone"] == manifest("raycronjob-ingest.yaml")["spec"]["timeZone"]


def test_both_schedulers_name_each_run_after_its_own_slot() -> None:
    """`--schedule-slot every:6h` is the schedules' own period in UTC, so a run's slot is its tick (docs/operations.md
    §Scheduled ingestion); the lease wait ends well before the run's deadline."""
    entrypoint = manifest("rayjob-ingest.yaml")["spec"]["entrypoint"]
    assert slot_rules.schedule_slot_flag(entrypoint) == "every:6h"
    words = shlex.split(entrypoint)
    wait = float(words[words.index("--lease-wait") + 1])
    assert 0 < wait < manifest("rayjob-ingest.yaml")["spec"]["activeDeadlineSeconds"] / 4
    for name, kind in (("raycronjob-ingest.yaml", "RayCronJob"), ("cronjob-ingest.yaml", "CronJob")):
        spec = manifest(name, kind)["spec"]
        assert slot_rules.check_schedule_slot(spec["schedule"], spec["timeZone"], entrypoint, name) == [], name


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"schedule": "0 * * * *"}, "fires at the start of every 6h UTC period (00:00, 06:00, 12:00, ...)"),
        ({"schedule": "30 */6 * * *"}, "'30 */6 * * *' does not"),
        ({"schedule": "0 */6 * * mon-fri"}, "'0 */6 * * mon-fri' does not"),
        ({"timeZone": "Europe/Berlin"}, "names UTC periods; set timeZone: Etc/UTC (got 'Europe/Berlin')"),
        ({"slot": "2026-11-23T06:00:00Z"}, "is one fixed slot: every scheduled run after the first"),
        ({"slot": "every:7h"}, "the period must be minutes, hours or 1d dividing a day evenly"),
    ],
)
def test_a_schedule_that_disagrees_with_its_slot_period_is_refused(
    change: dict[str, str], fragment: str, crd_schemas: Mapping[str, Mapping[str, Any]]
) -> None:
    document = manifest("raycronjob-ingest.yaml")
    spec = document["spec"]
    spec.update({k: v for k, v in change.items() if k != "slot"})
    if "slot" in change:
        spec["jobTemplate"]["entrypoint"] = spec["jobTemplate"]["entrypoint"].replace("every:6h", change["slot"])
    messages = [str(v) for v in validate_custom_resource(document, crd_schemas["RayCronJob"])]
    assert any(fragment in m and "spec.jobTemplate.entrypoint" in m for m in messages), messages


@pytest.mark.parametrize(
    ("schedule", "slot"),
    [("0 */6 * * *", "every:6h"), ("0 0,6,12,18 * * *", "every:6h"), ("@hourly", "every:1h"),
     ("*/15 * * * *", "every:15m"), ("@daily", "every:1d"), ("0 0-23/8 * * *", "every:8h")],
)
def test_schedules_that_match_their_slot_period(schedule: str, slot: str) -> None:
    entrypoint = f"python jobs/ingest.py --since auto --schedule-slot {slot}"
    assert slot_rules.check_schedule_slot(schedule, "Etc/UTC", entrypoint, "spec") == []
    assert slot_rules.check_schedule_slot(schedule, "UTC", f"python jobs/ingest.py --schedule-slot={slot}", "s") == []


def test_the_fallback_cronjob_is_exclusive_least_privilege_and_outlives_its_rayjob() -> None:
    cron = manifest("cronjob-ingest.yaml", "CronJob")["spec"]
    assert cron["concurrencyPolicy"] == "Forbid"
    role = manifest("cronjob-ingest.yaml", "Role")
    assert role["rules"] == [{"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["create", "get"]}]
    binding = manifest("cronjob-ingest.yaml", "RoleBinding")
    account = manifest("cronjob-ingest.yaml", "ServiceAccount")["metadata"]["name"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": "rsvheat"}]
    job = cron["jobTemplate"]["spec"]
    pod = job["template"]["spec"]
    assert pod["serviceAccountName"] == account
    rayjob = manifest("rayjob-ingest.yaml")["spec"]
    assert job["activeDeadlineSeconds"] > rayjob["preRunningDeadlineSeconds"] + rayjob["activeDeadlineSeconds"]
    container = pod["containers"][0]
    assert container["command"][:3] == ["python", "-m", "infra.cron_submit"] and (INFRA / "cron_submit.py").is_file()
    configmap = pod["volumes"][0]["configMap"]["name"]
    assert f"create configmap {configmap} --from-file=rayjob.yaml=infra/k8s/rayjob-ingest.yaml" in README
    slot_name = f"{manifest('cronjob-ingest.yaml', 'CronJob')['metadata']['name']}-29000000"
    assert kuberay_rules.check_name("RayJob", slot_name) == [], "the per-slot RayJob name must be a valid RayJob name"


def test_every_manifest_lives_in_the_rsvheat_namespace() -> None:
    for path in K8S_MANIFESTS:
        for document in load_documents(path):
            assert document["metadata"]["namespace"] == "rsvheat", path.name


def test_runtime_envs_are_valid_for_ray_and_run_from_the_image_project_folder() -> None:
    import yaml
    from ray.runtime_env import RuntimeEnv

    workdir = next(
        line.split()[1] for line in (INFRA / "Dockerfile").read_text().splitlines() if line.startswith("WORKDIR ")
    )
    for where, job in job_specs():
        env = yaml.safe_load(job["runtimeEnvYAML"])
        assert set(env) <= set(RuntimeEnv.known_fields), (
            f"{where}: unknown runtime_env keys {set(env) - set(RuntimeEnv.known_fields)}"
        )
        assert env["working_dir"] == workdir, f"{where}: the submitter uploads the image's {workdir}"
        RuntimeEnv(**{**env, "working_dir": str(REPO_ROOT)})  # Ray's own validation (the path must exist here)


def test_a_misspelled_ray_start_option_is_caught(crd_schemas: Mapping[str, Mapping[str, Any]]) -> None:
    document = manifest("raycluster.yaml")
    document["spec"]["headGroupSpec"]["rayStartParams"] = {"num-cpu": "0", "dashboard-host": "0.0.0.0"}
    messages = [str(v) for v in validate_custom_resource(document, crd_schemas["RayCluster"])]
    assert messages == ["spec.headGroupSpec.rayStartParams.num-cpu: not a `ray start` option; did you mean 'num-cpus'?"]
