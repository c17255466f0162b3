"""The Helm chart charts/archiver-operator: rendered and linted with the real
Helm library, every object checked against the Kubernetes JSON schemas
(kubernetes-validate), and the properties a production install relies on:
least-privilege RBAC without wildcards, the restricted pod security profile,
the operator's configuration, the alerts, the copies of the CRDs and of the
Argo CD health checks."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from conftest import (
    CHART_DIR,
    NAMESPACE,
    REPO,
    VARIANTS,
    crds,
    notes,
    of_kind,
    one,
    render,
)

sys.path.insert(0, str(Path(__file__).parent))
import sync_generated  # noqa: E402

# The chart declares kubeVersion >= 1.28 (the CRDs use x-kubernetes-validations
# fieldPath, new in 1.28): validate against the oldest and the
# newest schema kubernetes-validate ships.
KUBE_VERSIONS = ["1.28.0", kubernetes_validate.latest_version() + ".0"]
GROUP = "archiver.uptime.dev"
KINDS = ["ArchiverShard", "RetentionPolicy", "PartitionSchedule", "DeletionRequest"]
PLURALS = ["archivershards", "retentionpolicies", "partitionschedules", "deletionrequests"]

# ---------------------------------------------------------------------------
# Helm: render, lint, values schema


def test_helm_library_is_the_real_one() -> None:
    # helm-python-sdk binds libhelm_c, built from Helm's Go SDK (v4).
    assert helm.helm_sdk_version().startswith("v4."), helm.helm_sdk_version()
    assert Path(helm.library_path).name.startswith("libhelm_c")


def test_chart_metadata_matches_the_crate() -> None:
    with helm.Chart.load(CHART_DIR) as chart:
        meta = chart.metadata
    assert meta["apiVersion"] == "v2"
    assert meta["kubeVersion"] == f">={KUBE_VERSIONS[0]}-0", "validate against the oldest supported Kubernetes"
    assert meta["name"] == "archiver-operator"
    cargo = (REPO / "Cargo.toml").read_text()
    version = re.search(r'^version\s*=\s*"([^"]+)"', cargo, re.M).group(1)
    assert meta["appVersion"] == version, "appVersion must be the crate version (the image tag)"


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_helm_lint_is_clean(name: str) -> None:
    report = helm.lint(CHART_DIR, VARIANTS[name], strict=True, namespace=NAMESPACE)
    assert report["errors"] == [], report
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == [], problems


@pytest.mark.parametrize(
    "values, where",
    [
        ({"replicaCont": 3}, "replicaCont"),
        ({"networkPolicy": {"enabeld": True}}, "enabeld"),
        ({"metrics": {"serviceMonitor": {"enabled": True, "intervall": "30s"}}}, "intervall"),
        ({"rbac": {"secretNames": ["Redis_Shard"]}}, "/rbac/secretNames/0"),
        ({"logFormat": "xml"}, "/logFormat"),
        ({"replicaCount": 0}, "/replicaCount"),
        ({"watchNamespace": "Archiver"}, "/watchNamespace"),
        ({"cacheInvalidateUrls": ["http://a,http://b"]}, "/cacheInvalidateUrls/0"),
        ({"workers": {"databaseSecret": {"name": "db", "key": "a:b"}}}, "/workers/databaseSecret/key"),
        ({"image": {"digest": "latest"}}, "/image/digest"),
        ({"metrics": {"prometheusRule": {"enabled": True, "lagFor": "five minutes"}}}, "/metrics/prometheusRule/lagFor"),
    ],
)
def test_values_schema_rejects_typos_and_bad_values(values: dict[str, Any], where: str) -> None:
    with helm.Chart.load(CHART_DIR) as chart:
        with pytest.raises(helm.HelmValuesError) as raised:
            chart.validate_schema(values)
        assert where in str(raised.value), str(raised.value)
        with pytest.raises(helm.HelmValuesError):
            chart.render(values, name="x", namespace="y")


def test_values_schema_is_draft_07_and_strict() -> None:
    with helm.Chart.load(CHART_DIR) as chart:
        schema = chart.schema
        defaults = chart.values
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(defaults)

    # Every object with declared properties closes them, down the tree.
    def walk(node: dict[str, Any], path: str) -> None:
        if "properties" in node:
            assert node.get("additionalProperties") is False, f"{path or '/'} allows unknown keys"
            for key, child in node["properties"].items():
                walk(child, f"{path}/{key}")

    walk(schema, "")
    # values.yaml documents every key the schema knows, and nothing else.
    assert set(defaults) - {"global"} <= set(schema["properties"])


def test_notes_render() -> None:
    text = notes()
    assert "archiver-operator-leader" in text
    assert "kubectl get archiver -A" in text


# ---------------------------------------------------------------------------
# Kubernetes schemas

MONITORING_SCHEMAS: dict[str, dict[str, Any]] = {
    # kubernetes-validate has only the built-in kinds. The prometheus-operator
    # kinds are checked structurally against the fields of their CRDs the
    # chart uses (monitoring.coreos.com/v1), closed to catch misspellings.
    "ServiceMonitor": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["selector", "endpoints"],
                "properties": {
                    "selector": {"type": "object", "required": ["matchLabels"]},
                    "namespaceSelector": {"type": "object"},
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["port", "path"],
                            "properties": {
                                "port": {"type": "string"},
                                "path": {"type": "string"},
                                "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                                "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            },
                        },
                    },
                },
            },
        },
    },
    "PodMonitor": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["selector", "podMetricsEndpoints"],
                "properties": {
                    "selector": {"type": "object", "required": ["matchLabels"]},
                    "namespaceSelector": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "any": {"type": "boolean"},
                            "matchNames": {"type": "array", "items": {"type": "string"}},
                        },
                    },
                    "podMetricsEndpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["port", "path"],
                            "properties": {
                                "port": {"type": "string"},
                                "path": {"type": "string"},
                                "interval": {"type": "string"},
                                "scrapeTimeout": {"type": "string"},
                            },
                        },
                    },
                },
            },
        },
    },
    "PrometheusRule": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["groups"],
                "properties": {
                    "groups": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["name", "rules"],
                            "properties": {
                                "name": {"type": "string"},
                                "rules": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "additionalProperties": False,
                                        "required": ["expr"],
                                        "properties": {
                                            "alert": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                                            "record": {"type": "string"},
                                            "expr": {"type": "string", "minLength": 1},
                                            "for": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h|d)$"},
                                            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                                            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                                        },
                                    },
                                },
                            },
                        },
                    }
                },
            },
        },
    },
}


def test_every_rendered_object_matches_the_kubernetes_schemas(variant: tuple[str, dict[str, Any]]) -> None:
    name, values = variant
    objects = render(values)
    assert objects, name
    for obj in objects:
        label = f"{name}: {obj['kind']}/{obj['metadata']['name']}"
        assert obj["metadata"]["name"], label
        if obj["kind"] in MONITORING_SCHEMAS:
            jsonschema.validate(obj, MONITORING_SCHEMAS[obj["kind"]])
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                path = ".".join(str(p) for p in error.path)
                pytest.fail(f"{label} against Kubernetes {version}: {path}: {error.message}")
        # Namespaced objects go to the release namespace, or to the namespace
        # they are about (watched namespace, worker namespaces).
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"].get("namespace"), label


def test_crds_are_the_repository_crds_byte_for_byte() -> None:
    repo_crds = {p.name: p.read_bytes() for p in (REPO / "crds").glob("*.yaml")}
    chart_crds = {p.name: p.read_bytes() for p in (CHART_DIR / "crds").glob("*.yaml")}
    assert set(chart_crds) == set(repo_crds), "run python3 tests/chart/sync_generated.py"
    for file, data in repo_crds.items():
        assert chart_crds[file] == data, f"charts/archiver-operator/crds/{file} is stale: run python3 tests/chart/sync_generated.py"
    # Helm loads exactly these, and they are valid CustomResourceDefinitions.
    loaded = crds()
    assert sorted(c["filename"].split("/")[-1] for c in loaded) == sorted(repo_crds)
    kinds = []
    for crd in loaded:
        for doc in yaml.safe_load_all(crd["data"]):
            if not doc:
                continue
            for version in KUBE_VERSIONS:
                kubernetes_validate.validate(doc, version, strict=True)
            assert doc["spec"]["group"] == GROUP
            kinds.append(doc["spec"]["names"]["kind"])
    assert sorted(kinds) == sorted(KINDS)


def test_crds_serve_the_status_subresource() -> None:
    for crd in crds():
        for doc in yaml.safe_load_all(crd["data"]):
            if not doc:
                continue
            for served in doc["spec"]["versions"]:
                assert served.get("subresources", {}).get("status") == {}, doc["metadata"]["name"]


# ---------------------------------------------------------------------------
# RBAC

RBAC_KINDS = ("ClusterRole", "Role", "ClusterRoleBinding", "RoleBinding")


def rules_of(objects: list[dict[str, Any]], kind: str, name_suffix: str = "") -> list[dict[str, Any]]:
    roles = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].endswith(name_suffix)]
    return [rule for role in roles for rule in role.get("rules", [])]


def test_rbac_has_no_wildcard_anywhere(variant: tuple[str, dict[str, Any]]) -> None:
    _, values = variant
    for obj in render(values):
        if obj["kind"] not in RBAC_KINDS:
            continue
        for rule in obj.get("rules", []):
            for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                for item in rule.get(field, []):
                    assert "*" not in item, f"{obj['kind']}/{obj['metadata']['name']}: {field} {item}"
            assert "nonResourceURLs" not in rule
            # Nothing that escalates.
            assert not {"escalate", "bind", "impersonate", "deletecollection"} & set(rule["verbs"])
        assert "aggregationRule" not in obj


def flatten(rules: list[dict[str, Any]]) -> set[tuple[str, str, str, tuple[str, ...]]]:
    return {
        (group, resource, verb, tuple(rule.get("resourceNames", [])))
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def expected_operator_permissions(secrets: list[str], config_maps: list[str]) -> set[tuple[str, str, str, tuple[str, ...]]]:
    perms = set()
    for plural in PLURALS:
        perms |= {(GROUP, plural, "list", ()), (GROUP, plural, "watch", ())}
        perms.add((GROUP, f"{plural}/status", "patch", ()))
    perms.add((GROUP, "deletionrequests", "patch", ()))
    perms.add((GROUP, "archivershards/finalizers", "update", ()))
    perms |= {("apps", "deployments", v, ()) for v in ("list", "watch", "create", "patch")}
    perms |= {("events.k8s.io", "events", v, ()) for v in ("create", "patch")}
    if secrets:
        perms.add(("", "secrets", "get", tuple(secrets)))
    if config_maps:
        perms |= {("", "configmaps", v, tuple(config_maps)) for v in ("create", "patch")}
    return perms


def test_operator_rbac_is_exactly_what_the_code_calls() -> None:
    objects = render()
    role = [o for o in of_kind(objects, "ClusterRole") if o["metadata"]["name"] == "archiver-operator"]
    assert len(role) == 1
    assert flatten(role[0]["rules"]) == expected_operator_permissions(
        ["redis-shard-0"], ["privacy-policy-retention"]
    )
    binding = [o for o in of_kind(objects, "ClusterRoleBinding") if o["metadata"]["name"] == "archiver-operator"][0]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "archiver-operator"}
    sa = one(objects, "ServiceAccount")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}]

    # Leader election: one Lease by name, in the release namespace only.
    leader = [o for o in of_kind(objects, "Role") if o["metadata"]["name"].endswith("-leader-election")]
    assert len(leader) == 1 and leader[0]["metadata"]["namespace"] == NAMESPACE
    assert flatten(leader[0]["rules"]) == {
        ("coordination.k8s.io", "leases", "create", ()),
        ("coordination.k8s.io", "leases", "get", ("archiver-operator-leader",)),
        ("coordination.k8s.io", "leases", "patch", ("archiver-operator-leader",)),
    }


def test_secrets_are_readable_only_by_name() -> None:
    for values in VARIANTS.values():
        objects = render(values)
        for obj in objects:
            for rule in obj.get("rules", []) if obj["kind"] in RBAC_KINDS else []:
                if "secrets" in rule["resources"]:
                    assert rule["apiGroups"] == [""]
                    assert rule["verbs"] == ["get"], rule
                    assert rule.get("resourceNames"), rule
                if "configmaps" in rule["resources"]:
                    assert rule.get("resourceNames"), rule
    # No names: no Secret access at all.
    objects = render({"rbac": {"secretNames": [], "configMapNames": []}})
    resources = {r for o in objects if o["kind"] in RBAC_KINDS for rule in o.get("rules", []) for r in rule["resources"]}
    assert "secrets" not in resources and "configmaps" not in resources


def test_single_namespace_install_has_only_namespaced_roles() -> None:
    objects = render(VARIANTS["single-namespace"])
    assert of_kind(objects, "ClusterRole") == []
    assert of_kind(objects, "ClusterRoleBinding") == []
    operator = [o for o in of_kind(objects, "Role") if o["metadata"]["name"] == "archiver-operator"][0]
    assert operator["metadata"]["namespace"] == "archiver"
    assert flatten(operator["rules"]) == expected_operator_permissions(
        ["redis-shard-0"], ["privacy-policy-retention"]
    )
    binding = [o for o in of_kind(objects, "RoleBinding") if o["metadata"]["name"] == "archiver-operator"][0]
    assert binding["metadata"]["namespace"] == "archiver"
    assert binding["subjects"][0]["namespace"] == NAMESPACE
    env = env_of(one(objects, "Deployment"))
    assert env["ARCHIVER_NAMESPACE"]["value"] == "archiver"
    # The workers' Role is in the watched namespace.
    workers = [o for o in of_kind(objects, "Role") if o["metadata"]["name"].endswith("-worker")]
    assert [w["metadata"]["namespace"] for w in workers] == ["archiver"]
    pod_monitor = one(objects, "PodMonitor")
    assert pod_monitor["spec"]["namespaceSelector"] == {"matchNames": ["archiver"]}


def test_workers_may_get_their_shard_in_each_shard_namespace() -> None:
    objects = render(VARIANTS["everything"])
    roles = [o for o in of_kind(objects, "Role") if o["metadata"]["name"].endswith("-worker")]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["archiver-eu", "archiver-us"]
    for role in roles:
        assert flatten(role["rules"]) == {(GROUP, "archivershards", "get", ())}
    bindings = [o for o in of_kind(objects, "RoleBinding") if o["metadata"]["name"].endswith("-worker")]
    for binding in bindings:
        ns = binding["metadata"]["namespace"]
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "default", "namespace": ns}]
    # Default: the release namespace.
    roles = [o for o in of_kind(render(), "Role") if o["metadata"]["name"].endswith("-worker")]
    assert [r["metadata"]["namespace"] for r in roles] == [NAMESPACE]


def test_aggregated_roles_let_editors_manage_the_four_kinds() -> None:
    objects = render()
    view = [o for o in of_kind(objects, "ClusterRole") if o["metadata"]["name"].endswith("-view")][0]
    edit = [o for o in of_kind(objects, "ClusterRole") if o["metadata"]["name"].endswith("-edit")][0]
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert "rbac.authorization.k8s.io/aggregate-to-view" not in edit["metadata"]["labels"]
    assert {p for (_, p, _, _) in flatten(view["rules"])} == set(PLURALS)
    assert {v for (_, _, v, _) in flatten(edit["rules"])} == {"create", "update", "patch", "delete"}


# ---------------------------------------------------------------------------
# The operator Deployment


def env_of(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e for e in container["env"]}


def test_pod_security_is_restricted(variant: tuple[str, dict[str, Any]]) -> None:
    name, values = variant
    deployment = one(render(values), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsUser"] == 65532
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(key), key
    for volume in pod.get("volumes", []):
        assert "hostPath" not in volume, volume
    for container in pod["containers"] + pod.get("initContainers", []):
        sc = container["securityContext"]
        assert sc["runAsNonRoot"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert not sc.get("privileged")
        resources = container["resources"]
        assert resources["requests"]["cpu"] and resources["requests"]["memory"], name
        assert resources["limits"]["memory"], name


def test_deployment_runs_the_operator_with_leader_election_and_probes() -> None:
    objects = render()
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "archiver-operator:0.1.0"
    assert container["args"] == ["run"]
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/health"
    env = env_of(deployment)
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["DATABASE_URL"]["valueFrom"] == {"secretKeyRef": {"name": "archiver-database", "key": "url"}}
    assert env["ARCHIVER_LOG_FORMAT"]["value"] == "json"
    assert env["ARCHIVER_WORKER_IMAGE"]["value"] == "archiver-operator:0.1.0"
    assert env["ARCHIVER_WORKER_DATABASE_SECRET"]["value"] == "archiver-database:url"
    assert env["ARCHIVER_HTTP_ADDR"]["value"] == "0.0.0.0:8080"
    for absent in (
        "ARCHIVER_NAMESPACE",
        "ARCHIVER_SUPPRESSION_SALT",
        "ARCHIVER_CACHE_INVALIDATE_URLS",
        "ARCHIVER_ALERT_KEY_PATTERNS",
        "ARCHIVER_ERASURE_OUT_OF_SCOPE_TABLES",
        "ARCHIVER_ERASURE_REDIS_URL_0",
    ):
        assert absent not in env, absent
    # Every value is written once, and never as a literal secret.
    assert all("value" not in e or "://" not in e["value"] for e in env.values() if e["name"] == "DATABASE_URL")
    assert pod["serviceAccountName"] == one(objects, "ServiceAccount")["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is True
    assert one(objects, "ServiceAccount")["automountServiceAccountToken"] is False
    # The replicas spread over nodes and one survives a drain.
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    service = one(objects, "Service")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_configuration_reaches_the_environment() -> None:
    values = VARIANTS["everything"]
    deployment = one(render(values), "Deployment")
    env = env_of(deployment)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example.com/archiver-operator@sha256:" + "ab" * 32
    assert env["ARCHIVER_SUPPRESSION_SALT"]["valueFrom"] == {"secretKeyRef": {"name": "archiver-salt", "key": "salt"}}
    assert env["ARCHIVER_CACHE_INVALIDATE_URLS"]["value"] == ",".join(values["cacheInvalidateUrls"])
    assert env["ARCHIVER_ALERT_KEY_PATTERNS"]["value"] == ",".join(values["alertKeyPatterns"])
    assert env["ARCHIVER_ERASURE_OUT_OF_SCOPE_TABLES"]["value"] == "support_tickets,billing.invoices"
    assert env["ARCHIVER_ERASURE_REDIS_URL_0"]["valueFrom"] == {
        "secretKeyRef": {"name": "alert-router-redis", "key": "url"}
    }
    assert env["ARCHIVER_ERASURE_REDIS_URL_1"]["valueFrom"] == {
        "secretKeyRef": {"name": "status-page-redis", "key": "dsn"}
    }
    assert env["ARCHIVER_WORKER_IMAGE"]["value"] == "registry.example.com/archiver-operator:worker"
    assert env["ARCHIVER_WORKER_DATABASE_SECRET"]["value"] == "archiver-db-workers:dsn"
    assert env["ARCHIVER_LOG_FORMAT"]["value"] == "text"
    assert env["RUST_LOG"]["value"].startswith("info")
    assert deployment["spec"]["replicas"] == 3


def test_every_environment_variable_is_one_the_binary_reads() -> None:
    source = "\n".join(p.read_text() for p in (REPO / "src").rglob("*.rs"))
    for values in VARIANTS.values():
        for name in env_of(one(render(values), "Deployment")):
            if name == "RUST_LOG":
                continue
            # One variable per Secret, read by prefix (src/runtime/config.rs).
            name = re.sub(r"^(ARCHIVER_ERASURE_REDIS_URL_)\d+$", r"\1", name)
            assert f'"{name}' in source, f"{name} is not read anywhere in src/"


def test_single_replica_has_no_disruption_budget() -> None:
    assert of_kind(render({"replicaCount": 1}), "PodDisruptionBudget") == []


# ---------------------------------------------------------------------------
# Monitoring


def test_monitors_scrape_the_operator_and_the_workers() -> None:
    objects = render(VARIANTS["monitoring"])
    sm = one(objects, "ServiceMonitor")
    service = one(objects, "Service")
    assert sm["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus"
    pm = one(objects, "PodMonitor")
    # The labels the operator puts on worker pods (src/runtime/workers.rs).
    assert pm["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "archiver-worker",
        "app.kubernetes.io/managed-by": "archiver-operator",
    }
    workers_rs = (REPO / "src" / "runtime" / "workers.rs").read_text()
    assert '"archiver-worker"' in workers_rs and 'name: Some("http".into())' in workers_rs
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    assert of_kind(render(), "ServiceMonitor") == []
    assert of_kind(render(), "PrometheusRule") == []


def alerts(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rule = one(render(values), "PrometheusRule")
    return {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"] if "alert" in r}


def test_alerts_page_on_the_signals_that_matter() -> None:
    rules = alerts(VARIANTS["monitoring"])
    # Each shard's lag, computed by the leader from archive_watermark, against
    # that shard's own spec.lagSloSeconds (issue 16 item 1).
    # A suspended shard is expected to fall behind (issue 16 item 2).
    not_suspended = (
        ' unless on (namespace, shard) (max by (namespace, shard) (archiver_shard_lifecycle{state="suspended"}) == 1)'
    )
    assert rules["ArchiverLagAboveSLO"]["expr"] == (
        "(max by (namespace, shard) (archiver_shard_lag_seconds) > on (namespace, shard) "
        "max by (namespace, shard) (archiver_shard_lag_slo_seconds))" + not_suspended
    )
    assert rules["ArchiverLagAboveSLO"]["for"] == "5m"
    assert rules["ArchiverLagAboveSLO"]["labels"] == {"severity": "warning", "team": "platform"}
    assert rules["ArchiverLagCritical"]["expr"] == (
        "(max by (namespace, shard) (archiver_shard_lag_seconds) > 1800)" + not_suspended
    )
    assert rules["ArchiverLagCritical"]["labels"]["severity"] == "critical"
    assert "absent(archiver_shard_lag_seconds)" in rules["ArchiverShardLagAbsent"]["expr"]
    assert "unless on (namespace, shard)" in rules["ArchiverShardLagAbsent"]["expr"]
    assert "archiver_watermark_read_failures_total" in rules["ArchiverWatermarkUnreadable"]["expr"]
    assert rules["ArchiverWatermarkUnreadable"]["labels"]["severity"] == "critical"
    assert "archiver_partition_coverage_months) < 1" in rules["ArchiverPartitionMissing"]["expr"]
    assert rules["ArchiverDeletionDeadlineNear"]["expr"].endswith("(archiver_deletion_deadline_seconds) < 432000")
    assert rules["ArchiverDeletionDeadlineImminent"]["expr"].endswith("< 86400")
    assert "increase(archiver_rejected_rows_total[15m]) > 0" in rules["ArchiverRejectedRows"]["expr"].replace(")) > 0", ") > 0")
    assert "archiver_suppression_plan_problem" in rules["ArchiverSuppressionPlanFlip"]["expr"]
    assert "{{ $labels.reason }}" in rules["ArchiverSuppressionPlanFlip"]["annotations"]["summary"]
    # Prometheus templates survive Helm's templating.
    assert "{{ $labels.shard }}" in rules["ArchiverLagAboveSLO"]["annotations"]["summary"]
    for rule in rules.values():
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    # Thresholds follow the values.
    tuned = alerts({"metrics": {"prometheusRule": {"enabled": True, "criticalLagSeconds": 3600, "lagFor": "10m", "deletionDeadlineWarningDays": 7}}})
    assert tuned["ArchiverLagCritical"]["expr"].startswith("(max by (namespace, shard) (archiver_shard_lag_seconds) > 3600)")
    assert tuned["ArchiverLagAboveSLO"]["for"] == "10m"
    assert tuned["ArchiverDeletionDeadlineNear"]["expr"].endswith(f"< {7 * 86400}")
    assert "ArchiverViewsBehind" in alerts(VARIANTS["everything"])


# The sample names the binary exports: every family of its metrics registry,
# committed by tests/metrics_exposition.rs, which checks it against the
# registry and a scrape of the running operator (a labelled family without
# samples is not in a scrape at all, so a bare scrape would be incomplete).
EXPORTED_METRICS_FILE = Path(__file__).parent / "exported-metrics.txt"
METRIC_NAME = re.compile(r"(?<![A-Za-z0-9_:])archiver_[a-z0-9_]+")


def exported_labels() -> dict[str, set[str]]:
    """Each exported sample name with the names of its labels."""
    found = {}
    for line in EXPORTED_METRICS_FILE.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, labels = line.partition("{")
        found[name] = set(labels.rstrip("}").split(",")) if labels else set()
    return found


def exported_metrics() -> set[str]:
    return set(exported_labels())


def assert_only_exported_metrics(text: str, where: str) -> set[str]:
    used = set(METRIC_NAME.findall(text))
    unknown = sorted(used - exported_metrics())
    assert not unknown, f"{where} uses metrics the binary does not export: {unknown}"
    return used


def test_every_alert_metric_is_one_the_binary_exports() -> None:
    exported = exported_metrics()
    assert {"archiver_shard_lag_seconds", "archiver_reconciles_total", "archiver_deletion_failures_total"} <= exported
    for variant in ("monitoring", "everything"):
        for name, rule in alerts(VARIANTS[variant]).items():
            used = assert_only_exported_metrics(rule["expr"], f"alert {name}")
            assert used, f"alert {name} uses no archiver metric"


def test_the_metric_check_catches_a_misspelt_name() -> None:
    with pytest.raises(AssertionError, match="archiver_shard_lag_secs"):
        assert_only_exported_metrics("max(archiver_shard_lag_secs) > 1", "a misspelt rule")
    assert assert_only_exported_metrics("job:archiver_x:rate5m + archiver_views_lag_seconds", "ok") == {
        "archiver_views_lag_seconds"
    }


def promtool_required() -> bool:
    """In CI (CI=true) and under the README's test command
    (scripts/test.sh sets ARCHIVER_REQUIRE_PROMTOOL=1, whatever CI system
    runs it), a missing promtool fails instead of skipping."""
    return any(
        os.environ.get(name, "").lower() in ("1", "true", "yes")
        for name in ("CI", "ARCHIVER_REQUIRE_PROMTOOL")
    )


def promtool() -> str:
    """promtool from Debian's prometheus package. scripts/chart-tests.sh
    installs it; someone running pytest by hand without it gets a skip, the
    test command and CI a failure (promtool_required)."""
    path = shutil.which("promtool")
    if path is None:
        if promtool_required():
            pytest.fail("promtool is missing: scripts/chart-tests.sh fetches it from Debian's prometheus package")
        pytest.skip("promtool not installed (Debian package prometheus): PromQL not parsed")
    return path


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120)


def test_prometheus_rules_pass_promtool(tmp_path: Path) -> None:
    rule = one(render(VARIANTS["everything"]), "PrometheusRule")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    # And promtool does refuse a broken expression (the check is not a no-op).
    broken = {"groups": [{"name": "x", "rules": [{"alert": "Broken", "expr": "max(archiver_views_lag_seconds > 1"}]}]}
    path.write_text(yaml.safe_dump(broken))
    assert run_promtool("check", "rules", str(path)).returncode != 0


def alert_rules_without_annotations(values: dict[str, Any], keep: tuple[str, ...] = ()) -> dict[str, Any]:
    """The rendered groups, as a rule file for `promtool test rules`; the
    annotations are dropped except on the alerts in `keep` (promtool compares
    them whole)."""
    rule = one(render(values), "PrometheusRule")
    groups = copy.deepcopy(rule["spec"]["groups"])
    for group in groups:
        for r in group["rules"]:
            if r.get("alert") not in keep:
                r.pop("annotations", None)
    return {"groups": groups}


def test_new_alerts_fire_on_the_series_they_watch(tmp_path: Path) -> None:
    """The alerts' behaviour on synthetic series (promtool test rules), not
    only their syntax: views lag against its SLO, a retention drift that
    never falls, a blocked partition drop, tenants without a tier, and the
    deadline of a DeletionRequest named by its own namespace whatever the
    scrape did to the label."""
    values = VARIANTS["monitoring"]
    rendered = alerts(values)
    imminent = rendered["ArchiverDeletionDeadlineImminent"]["annotations"]
    (tmp_path / "rules.yaml").write_text(
        yaml.safe_dump(alert_rules_without_annotations(values, keep=("ArchiverDeletionDeadlineImminent",)))
    )
    warning = {"severity": "warning", "team": "platform"}
    day = 24 * 12  # 5-minute samples (within Prometheus' 5-minute lookback)
    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                # The leader's views fall behind at minute 10; the standby
                # reports 0 (max over the replicas).
                "interval": "1m",
                "input_series": [
                    {"series": 'archiver_views_lag_seconds{pod="leader"}', "values": "30x9 120x30"},
                    {"series": 'archiver_views_lag_seconds{pod="standby"}', "values": "0x40"},
                ],
                "alert_rule_test": [
                    {"eval_time": "9m", "alertname": "ArchiverViewsLagAboveSLO", "exp_alerts": []},
                    {"eval_time": "14m", "alertname": "ArchiverViewsLagAboveSLO", "exp_alerts": []},
                    {"eval_time": "16m", "alertname": "ArchiverViewsLagAboveSLO", "exp_alerts": [{"exp_labels": warning}]},
                ],
            },
            {
                # probe_minute: drift rises by 100 rows every 5 minutes and
                # a daily run brings it back to 5 (healthy). probe_day: it
                # only rises (no run deletes anything). probe_month: nothing
                # has expired for 30 hours, then rows expire and the daily
                # run at 48h removes them (healthy: a window without drift
                # says nothing).
                "interval": "5m",
                "input_series": [
                    {"series": 'archiver_retention_drift_rows{pod="leader",table="probe_minute"}', "values": " ".join([f"5+100x{day - 1}"] * 4)},
                    {"series": 'archiver_retention_drift_rows{pod="leader",table="probe_day"}', "values": f"0+100x{4 * day - 1}"},
                    {"series": 'archiver_retention_drift_rows{pod="leader",table="probe_month"}', "values": f"0x{30 * 12 - 1} 100+100x{18 * 12 - 1} 0+100x{48 * 12 - 1}"},
                ],
                "alert_rule_test": [
                    {"eval_time": "20h", "alertname": "ArchiverRetentionDrift", "exp_alerts": []},
                    {
                        "eval_time": "45h",
                        "alertname": "ArchiverRetentionDrift",
                        "exp_alerts": [{"exp_labels": {**warning, "table": "probe_day"}}],
                    },
                    {
                        "eval_time": "80h",
                        "alertname": "ArchiverRetentionDrift",
                        "exp_alerts": [{"exp_labels": {**warning, "table": "probe_day"}}],
                    },
                ],
            },
            {
                # A drop blocked for 7 hours (dropBlockedFor 6h); a tenant
                # without a tier from minute 30 (for 1h). The standby
                # reports 0.
                "interval": "5m",
                "input_series": [
                    {"series": 'archiver_partition_drop_blocked{pod="leader"}', "values": "1x96"},
                    {"series": 'archiver_partition_drop_blocked{pod="standby"}', "values": "0x96"},
                    {"series": 'archiver_retention_tenants_without_tier{pod="leader"}', "values": "0x5 2x90"},
                ],
                "alert_rule_test": [
                    {"eval_time": "5h50m", "alertname": "ArchiverPartitionDropBlocked", "exp_alerts": []},
                    {"eval_time": "6h10m", "alertname": "ArchiverPartitionDropBlocked", "exp_alerts": [{"exp_labels": warning}]},
                    {"eval_time": "1h20m", "alertname": "ArchiverTenantsWithoutTier", "exp_alerts": []},
                    {"eval_time": "1h40m", "alertname": "ArchiverTenantsWithoutTier", "exp_alerts": [{"exp_labels": warning}]},
                ],
            },
            {
                # The ServiceMonitor keeps the target's namespace; the
                # request's own namespace becomes exported_namespace.
                "interval": "1m",
                "input_series": [
                    {
                        "series": 'archiver_deletion_deadline_seconds{namespace="archiver-system",exported_namespace="tenants",name="erase-1",pod="leader"}',
                        "values": "3600x10",
                    },
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "5m",
                        "alertname": "ArchiverDeletionDeadlineImminent",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "critical",
                                    "team": "platform",
                                    "namespace": "archiver-system",
                                    "exported_namespace": "tenants",
                                    "name": "erase-1",
                                },
                                "exp_annotations": {
                                    "summary": "DeletionRequest tenants/erase-1 is due in under a day",
                                    "description": imminent["description"],
                                },
                            }
                        ],
                    },
                ],
            },
        ],
    }
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    result = run_promtool("test", "rules", str(tmp_path / "tests.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr


# The labels a scrape adds to every series of the operator (the ServiceMonitor
# keeps the target's namespace), beside those the binary exports.
SCRAPE_LABELS = {"namespace", "pod", "job", "instance"}


def assert_series_are_exported(tests: dict[str, Any]) -> None:
    """Every input series of a promtool test file is a sample name the binary
    exports, with exactly its exported labels plus the scrape's: the synthetic
    input is what a Prometheus scraping the operator holds."""
    exported = exported_labels()
    for test in tests["tests"]:
        for series in test["input_series"]:
            name, _, labels = series["series"].partition("{")
            names = {pair.split("=", 1)[0] for pair in re.findall(r'[a-z_]+="[^"]*"', labels)}
            assert name in exported, f"{name} is not exported"
            assert names - SCRAPE_LABELS == exported[name], f"{series['series']}: labels {sorted(names)}"


def assert_alerts_exist(tests: dict[str, Any], rendered: dict[str, Any]) -> None:
    """promtool passes an `exp_alerts: []` check of an alert the rule file
    does not have: a misspelt name would prove nothing."""
    for test in tests["tests"]:
        for check in test["alert_rule_test"]:
            assert check["alertname"] in rendered, f"no alert {check['alertname']}"


def shard_series(
    shard: str, lag: str, slo: str | None, lifecycle: str = "active", pod: str = "leader", lifecycle_values: str = "x40"
) -> list[dict[str, str]]:
    """What the leader exports for one shard (src/archive/health.rs,
    ShardLagExport; src/metrics.rs, observe_shard): its lag, its
    spec.lagSloSeconds and its lifecycle (1 for the current state, 0 for
    the two others). `lag` and `slo` are promtool value strings; `slo`
    None leaves the SLO series out; `lifecycle_values` follows each
    lifecycle series' value."""
    target = f'namespace="archiver-system",pod="{pod}",job="archiver-operator"'
    series = [{"series": f'archiver_shard_lag_seconds{{{target},shard="{shard}"}}', "values": lag}]
    if slo is not None:
        series.append({"series": f'archiver_shard_lag_slo_seconds{{{target},shard="{shard}"}}', "values": slo})
    for state in ("active", "suspended", "retired"):
        series.append(
            {
                "series": f'archiver_shard_lifecycle{{{target},shard="{shard}",state="{state}"}}',
                "values": f"{int(state == lifecycle)}{lifecycle_values}",
            }
        )
    return series


def test_lag_alerts_fire_on_the_series_they_watch(tmp_path: Path) -> None:
    """The four lag alerts on synthetic series shaped like the leader's
    exports (promtool test rules): each fires on the input it watches and
    stays silent on healthy input, suspended shards included."""
    values = VARIANTS["monitoring"]
    above_slo = alerts(values)["ArchiverLagAboveSLO"]["annotations"]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(alert_rules_without_annotations(values, keep=("ArchiverLagAboveSLO",))))
    warning = {"severity": "warning", "team": "platform"}
    critical = {"severity": "critical", "team": "platform"}

    def shard(name: str) -> dict[str, str]:
        return {"namespace": "archiver-system", "shard": name}

    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                # 200 s behind: above an SLO of 180 s (fires after lagFor,
                # 5m), within one of 300 s; suspended (left out); resumed
                # (its suspended series is 0: not left out). The standby
                # exports no lag.
                "interval": "1m",
                "input_series": [
                    *shard_series("tenants/slow", "200x40", "180x40"),
                    *shard_series("tenants/lenient", "200x40", "300x40"),
                    *shard_series("tenants/paused", "200x40", "180x40", lifecycle="suspended"),
                    *shard_series("tenants/resumed", "200x40", "180x40"),
                ],
                "alert_rule_test": [
                    {"eval_time": "4m", "alertname": "ArchiverLagAboveSLO", "exp_alerts": []},
                    {
                        "eval_time": "6m",
                        "alertname": "ArchiverLagAboveSLO",
                        "exp_alerts": [
                            {
                                "exp_labels": {**warning, **shard("tenants/resumed")},
                                "exp_annotations": {
                                    "summary": "Shard tenants/resumed is 3m 20s behind, above its spec.lagSloSeconds",
                                    "description": above_slo["description"],
                                },
                            },
                            {
                                "exp_labels": {**warning, **shard("tenants/slow")},
                                "exp_annotations": {
                                    "summary": "Shard tenants/slow is 3m 20s behind, above its spec.lagSloSeconds",
                                    "description": above_slo["description"],
                                },
                            },
                        ],
                    },
                    {"eval_time": "30m", "alertname": "ArchiverLagCritical", "exp_alerts": []},
                    {"eval_time": "30m", "alertname": "ArchiverShardLagAbsent", "exp_alerts": []},
                ],
            },
            {
                # criticalLagSeconds 1800 (for 1m): 1900 s behind pages,
                # 1700 s does not, nor does a suspended shard 1900 s behind;
                # a shard crossing 1800 at minute 10 pages from minute 11.
                "interval": "1m",
                "input_series": [
                    *shard_series("tenants/far", "1900x40", "180x40"),
                    *shard_series("tenants/near", "1700x40", "180x40"),
                    *shard_series("tenants/paused", "1900x40", "180x40", lifecycle="suspended"),
                    *shard_series("tenants/falling-behind", "1200+60x40", "180x40"),
                ],
                "alert_rule_test": [
                    {"eval_time": "0m", "alertname": "ArchiverLagCritical", "exp_alerts": []},
                    {"eval_time": "2m", "alertname": "ArchiverLagCritical", "exp_alerts": [{"exp_labels": {**critical, **shard("tenants/far")}}]},
                    {"eval_time": "10m", "alertname": "ArchiverLagCritical", "exp_alerts": [{"exp_labels": {**critical, **shard("tenants/far")}}]},
                    {
                        "eval_time": "13m",
                        "alertname": "ArchiverLagCritical",
                        "exp_alerts": [
                            {"exp_labels": {**critical, **shard("tenants/falling-behind")}},
                            {"exp_labels": {**critical, **shard("tenants/far")}},
                        ],
                    },
                ],
            },
            {
                # A shard the leader reconciles (SLO series) whose lag it
                # cannot compute (no watermark row: never ticked) for 15m
                # fires; one whose first tick comes at minute 10 does not,
                # nor one with its lag all along.
                "interval": "1m",
                "input_series": [
                    {"series": 'archiver_shard_lag_slo_seconds{namespace="archiver-system",pod="leader",job="archiver-operator",shard="tenants/new"}', "values": "180x40"},
                    {"series": 'archiver_shard_lag_slo_seconds{namespace="archiver-system",pod="leader",job="archiver-operator",shard="tenants/late"}', "values": "180x40"},
                    {"series": 'archiver_shard_lag_seconds{namespace="archiver-system",pod="leader",job="archiver-operator",shard="tenants/late"}', "values": "_x10 30x30"},
                    *shard_series("tenants/ok", "30x40", "180x40"),
                ],
                "alert_rule_test": [
                    {"eval_time": "14m", "alertname": "ArchiverShardLagAbsent", "exp_alerts": []},
                    {"eval_time": "16m", "alertname": "ArchiverShardLagAbsent", "exp_alerts": [{"exp_labels": {**warning, **shard("tenants/new")}}]},
                    {"eval_time": "30m", "alertname": "ArchiverShardLagAbsent", "exp_alerts": [{"exp_labels": {**warning, **shard("tenants/new")}}]},
                ],
            },
            {
                # No archiver_shard_lag_seconds at all (no leader scraped,
                # or no ArchiverShard): fires after 15m, without labels of
                # its own. The standby only exports its (flat) counter.
                "interval": "1m",
                "input_series": [
                    {"series": 'archiver_watermark_read_failures_total{namespace="archiver-system",pod="standby",job="archiver-operator"}', "values": "0x40"},
                ],
                "alert_rule_test": [
                    {"eval_time": "14m", "alertname": "ArchiverShardLagAbsent", "exp_alerts": []},
                    {"eval_time": "16m", "alertname": "ArchiverShardLagAbsent", "exp_alerts": [{"exp_labels": warning}]},
                ],
            },
            {
                # The leader is gone at minute 11 (its pod deleted: the
                # scrape marks its series stale) and no replica leads: no lag
                # series at all, which fires 15m later.
                "interval": "1m",
                "input_series": [
                    *shard_series("tenants/ok", "30x10 stale", "180x10 stale", lifecycle_values="x10 stale"),
                    {"series": 'archiver_watermark_read_failures_total{namespace="archiver-system",pod="standby",job="archiver-operator"}', "values": "0x40"},
                ],
                "alert_rule_test": [
                    {"eval_time": "10m", "alertname": "ArchiverShardLagAbsent", "exp_alerts": []},
                    {"eval_time": "25m", "alertname": "ArchiverShardLagAbsent", "exp_alerts": []},
                    {"eval_time": "27m", "alertname": "ArchiverShardLagAbsent", "exp_alerts": [{"exp_labels": warning}]},
                ],
            },
            {
                # The leader's reads of archive_watermark fail from minute 10
                # (one every 10-20 s: two per 30 s scrape): pages after 5m of
                # rising failures. The standby's counter is flat.
                "interval": "30s",
                "input_series": [
                    {"series": 'archiver_watermark_read_failures_total{namespace="archiver-system",pod="leader",job="archiver-operator"}', "values": "0x20 2+2x60"},
                    {"series": 'archiver_watermark_read_failures_total{namespace="archiver-system",pod="standby",job="archiver-operator"}', "values": "3x80"},
                ],
                "alert_rule_test": [
                    {"eval_time": "10m", "alertname": "ArchiverWatermarkUnreadable", "exp_alerts": []},
                    {"eval_time": "14m", "alertname": "ArchiverWatermarkUnreadable", "exp_alerts": []},
                    {"eval_time": "17m", "alertname": "ArchiverWatermarkUnreadable", "exp_alerts": [{"exp_labels": critical}]},
                    {"eval_time": "30m", "alertname": "ArchiverWatermarkUnreadable", "exp_alerts": [{"exp_labels": critical}]},
                ],
            },
            {
                # Healthy reads: a flat counter (failures long ago), one
                # failed read at minute 10 (a blip: it leaves the 5m window
                # before the alert's 5m "for" ends), and a counter reset by
                # a restart: none pages.
                "interval": "30s",
                "input_series": [
                    {"series": 'archiver_watermark_read_failures_total{namespace="archiver-system",pod="leader",job="archiver-operator"}', "values": "7x80"},
                    {"series": 'archiver_watermark_read_failures_total{namespace="archiver-system",pod="blip",job="archiver-operator"}', "values": "0x20 1x60"},
                    {"series": 'archiver_watermark_read_failures_total{namespace="archiver-system",pod="restarted",job="archiver-operator"}', "values": "5x20 0x60"},
                ],
                "alert_rule_test": [
                    {"eval_time": eval_time, "alertname": "ArchiverWatermarkUnreadable", "exp_alerts": []}
                    for eval_time in ("5m", "11m", "13m", "15m", "17m", "30m")
                ],
            },
        ],
    }
    assert_series_are_exported(tests)
    assert_alerts_exist(tests, alerts(values))
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    result = run_promtool("test", "rules", str(tmp_path / "tests.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_lag_alert_thresholds_follow_the_values(tmp_path: Path) -> None:
    """criticalLagSeconds and lagFor change when the lag alerts fire, not
    only the rendered text: with 3600 and 10m, 1900 s behind is not
    critical, 3700 s is, and 200 s above a 180 s SLO waits 10 minutes (the
    two far shards have an SLO of 2 hours, above both)."""
    values = copy.deepcopy(VARIANTS["monitoring"])
    values["metrics"]["prometheusRule"].update({"criticalLagSeconds": 3600, "lagFor": "10m"})
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(alert_rules_without_annotations(values)))
    page = {"severity": "warning", "team": "platform", "namespace": "archiver-system", "shard": "tenants/slow"}
    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    *shard_series("tenants/slow", "200x40", "180x40"),
                    *shard_series("tenants/far", "1900x40", "7200x40"),
                    *shard_series("tenants/farther", "3700x40", "7200x40"),
                ],
                "alert_rule_test": [
                    {"eval_time": "9m", "alertname": "ArchiverLagAboveSLO", "exp_alerts": []},
                    {"eval_time": "11m", "alertname": "ArchiverLagAboveSLO", "exp_alerts": [{"exp_labels": page}]},
                    {
                        "eval_time": "11m",
                        "alertname": "ArchiverLagCritical",
                        "exp_alerts": [
                            {"exp_labels": {"severity": "critical", "team": "platform", "namespace": "archiver-system", "shard": "tenants/farther"}}
                        ],
                    },
                ],
            },
        ],
    }
    assert_series_are_exported(tests)
    assert_alerts_exist(tests, alerts(values))
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    result = run_promtool("test", "rules", str(tmp_path / "tests.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_documented_with_what_to_do() -> None:
    """Each alert has a row in the chart README's table and one in the
    runbook (docs/OPERATIONS.md, section Alerts) with its severity."""
    readme = (CHART_DIR / "README.md").read_text()
    runbook = (REPO / "docs" / "OPERATIONS.md").read_text().split("## Alerts", 1)
    assert len(runbook) == 2, "docs/OPERATIONS.md has no Alerts section"
    rows = {}
    for line in runbook[1].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`Archiver"):
            rows[cells[0].strip("`")] = cells
    rendered = alerts(VARIANTS["monitoring"])
    assert set(rows) == set(rendered), "runbook rows and alerts differ"
    for name, rule in rendered.items():
        assert f"| {name} |" in readme, f"{name} is not in the chart README's alert table"
        _, severity, means, do = rows[name]
        assert severity == rule["labels"]["severity"], name
        assert means and do, name


# ---------------------------------------------------------------------------
# Grafana dashboard

DASHBOARD_FILE = CHART_DIR / "dashboards" / "archiver.json"
DASHBOARD_KEY = "archiver-operator.json"
# Values for Grafana's variables, so that promtool can parse the queries.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    # The panels that use it set a minimum interval of an hour.
    "$__interval": "1h",
    "$__range": "6h",
    "$views_lag_slo": "90",
    "$shard": ".*",
}


def dashboard_file() -> dict[str, Any]:
    return json.loads(DASHBOARD_FILE.read_text())


def rendered_dashboard(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    objects = [o for o in of_kind(render(values), "ConfigMap") if o["metadata"]["name"].endswith("-dashboard")]
    assert len(objects) == 1, objects
    return objects[0], json.loads(objects[0]["data"][DASHBOARD_KEY])


def panels_of(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def queries_of(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and query variable."""
    found = []
    for panel in panels_of(dashboard):
        for target in panel["targets"]:
            found.append((f"panel {panel['id']} {panel['title']!r} {target['refId']}", target["expr"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        # label_values(METRIC, LABEL) is Grafana's, not PromQL: check it as
        # the PromQL it stands for.
        match = re.fullmatch(r"label_values\((.+),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)", query)
        assert match, f"variable {variable['name']}: unexpected query {query!r}"
        found.append((f"variable {variable['name']}", f"group by ({match.group(2)}) ({match.group(1)})"))
    return found


def substitute_variables(expr: str) -> str:
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARIABLES[name])
    assert "$" not in expr, f"a Grafana variable without a test value in {expr!r}"
    return expr


def test_dashboard_is_off_by_default_and_a_sidecar_configmap_when_enabled() -> None:
    assert [o for o in of_kind(render(), "ConfigMap")] == []
    cm, shipped = rendered_dashboard({"grafana": {"dashboard": {"enabled": True}}})
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == NAMESPACE
    assert list(cm["data"]) == [DASHBOARD_KEY]
    # The file as shipped, with the views SLO of the values.
    expected = dashboard_file()
    for variable in expected["templating"]["list"]:
        if variable["name"] == "views_lag_slo":
            assert variable["query"] == "90"
    assert shipped == expected
    # Small enough for a client-side `kubectl apply` (Argo CD's default),
    # which copies the object into an annotation limited to 256 KiB.
    assert len(json.dumps(cm)) < 200 * 1024
    cm, shipped = rendered_dashboard(
        {
            "grafana": {
                "dashboard": {
                    "enabled": True,
                    "labelKey": "example.com/dashboard",
                    "labelValue": "archiver",
                    "namespace": "monitoring",
                    "labels": {"team": "platform"},
                    "annotations": {"grafana_folder": "Archiver"},
                }
            },
            "metrics": {"prometheusRule": {"viewsLagSloSeconds": 120}},
        }
    )
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["example.com/dashboard"] == "archiver"
    assert cm["metadata"]["labels"]["team"] == "platform"
    assert "grafana_dashboard" not in cm["metadata"]["labels"]
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Archiver"}
    slo = [v for v in shipped["templating"]["list"] if v["name"] == "views_lag_slo"]
    assert slo[0]["query"] == "120"
    # The alert uses the same SLO.
    rule = alerts({"metrics": {"prometheusRule": {"enabled": True, "viewsLagSloSeconds": 120}}})
    assert rule["ArchiverViewsLagAboveSLO"]["expr"] == "max(archiver_views_lag_seconds) > 120"


@pytest.mark.parametrize(
    "values, where",
    [
        ({"grafana": {"dashboard": {"enabled": "yes"}}}, "/grafana/dashboard/enabled"),
        ({"grafana": {"dashboard": {"enabled": True, "labelKey": "bad key"}}}, "/grafana/dashboard/labelKey"),
        ({"grafana": {"dashboard": {"enabled": True, "labelValue": "a b"}}}, "/grafana/dashboard/labelValue"),
        ({"grafana": {"dashbaord": {"enabled": True}}}, "dashbaord"),
        ({"metrics": {"prometheusRule": {"viewsLagSloSeconds": 0}}}, "/metrics/prometheusRule/viewsLagSloSeconds"),
        ({"metrics": {"prometheusRule": {"retentionDriftWindow": "a day"}}}, "/metrics/prometheusRule/retentionDriftWindow"),
    ],
)
def test_dashboard_values_are_checked(values: dict[str, Any], where: str) -> None:
    with helm.Chart.load(CHART_DIR) as chart:
        with pytest.raises(helm.HelmValuesError) as raised:
            chart.validate_schema(values)
        assert where in str(raised.value), str(raised.value)


def test_dashboard_is_well_formed() -> None:
    dashboard = dashboard_file()
    assert dashboard["uid"] == "archiver-operator"
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "shard", "views_lag_slo"}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    titles = [p["title"] for p in panels_of(dashboard)]
    assert len(titles) == len(set(titles)), "panel titles are unique"
    # No two panels overlap on the 24-column grid.
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] >= 1 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]
    for panel in panels_of(dashboard):
        assert panel["description"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert target["expr"].strip(), panel["title"]
            # increase() over $__interval is empty below two scrapes.
            if "$__interval" in target["expr"]:
                assert panel.get("interval") == "1h", panel["title"]


def test_dashboard_shows_what_operators_watch() -> None:
    """Issue 16 item 5: each topic is on the dashboard, as one panel holding
    all of its series."""
    exprs_by_panel = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in panels_of(dashboard_file())}

    def panel_with(*needles: str) -> str:
        for title, exprs in exprs_by_panel.items():
            if all(n in exprs for n in needles):
                return title
        pytest.fail(f"no panel shows {needles}")

    panel_with("archiver_shard_lag_seconds", "archiver_shard_lag_slo_seconds")  # per-shard lag against its SLO
    panel_with("archiver_rows_archived_total", "* 60")  # rows per minute
    panel_with("archiver_rejected_rows_total", "* 60")  # rejects per minute
    panel_with("archiver_views_lag_seconds", "$views_lag_slo")  # views lag against the freshness SLO
    panel_with("archiver_retention_deleted_rows_total", "archiver_retention_run_duration_seconds_count")  # per run
    panel_with("archiver_retention_drift_rows")
    panel_with("archiver_partition_coverage_months")
    panel_with("archiver_partition_drop_blocked")
    panel_with("archiver_retention_tenants_without_tier")
    panel_with("archiver_deletion_deadline_seconds")
    panel_with("archiver_deletion_duration_seconds_count", "archiver_deletion_failures_total")  # outcomes
    panel_with("archiver_reconcile_failures_total", "by (kind")  # errors by kind
    # Only the shard variable filters: worker series live in the shard
    # namespaces, so a namespace filter would hide them.
    for title, exprs in exprs_by_panel.items():
        assert "$namespace" not in exprs, title


def test_dashboard_names_only_exported_metrics() -> None:
    # The whole file: queries, variables and the descriptions' prose.
    used = assert_only_exported_metrics(DASHBOARD_FILE.read_text(), str(DASHBOARD_FILE.relative_to(REPO)))
    assert len(used) >= 15, used


def synthetic_series(minutes: int) -> list[dict[str, str]]:
    """One series of every exported sample name, with its labels and the
    target labels a scrape adds (a metric's own `namespace` becomes
    `exported_namespace`, as the ServiceMonitor's scrape renames it):
    counters rising, gauges at 1."""
    values_of = {"shard": "archiver/shard-0", "kind": "ArchiverShard", "table": "probe_minute"}
    series = []
    for name, labels in sorted(exported_labels().items()):
        base = {"pod": "archiver-operator-0", "namespace": "archiver-system"}
        for label in sorted(labels - {"le", "namespace"}):
            base[label] = values_of.get(label, "x")
        if "namespace" in labels:
            base["exported_namespace"] = "tenants"
        counting = name.endswith(("_total", "_bucket", "_count", "_sum"))
        for le in ("0.1", "1", "+Inf") if "le" in labels else (None,):
            label_set = dict(base, **({"le": le} if le else {}))
            text = ",".join(f'{k}="{v}"' for k, v in label_set.items())
            series.append({"series": f"{name}{{{text}}}", "values": f"0+10x{minutes}" if counting else f"1x{minutes}"})
    return series


def test_dashboard_queries_return_data_on_the_exported_series(tmp_path: Path) -> None:
    """Every query of the dashboard, fed one series of every metric the
    binary exports with the labels it exports, returns something: no
    grouping or matching on a label the metric lacks, no empty division.
    promtool evaluates absent(query), which is empty exactly when the
    query is not."""
    queries = queries_of(dashboard_file())
    (tmp_path / "none.yaml").write_text(yaml.safe_dump({"groups": []}))
    tests = {
        "rule_files": ["none.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": synthetic_series(90),
                "promql_expr_test": [
                    {"expr": f"absent({substitute_variables(expr)})", "eval_time": "80m", "exp_samples": []}
                    for _, expr in queries
                ],
            }
        ],
    }
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    result = run_promtool("test", "rules", str(tmp_path / "tests.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    # Every query as a recording rule: promtool parses each expression.
    queries = queries_of(dashboard_file())
    assert len(queries) >= 20, queries
    rules = [
        {"record": f"dashboard:query_{i}:test", "expr": substitute_variables(expr)}
        for i, (_, expr) in enumerate(queries)
    ]
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_promtool("check", "rules", str(path))
    where = "\n".join(f"dashboard:query_{i}:test = {w}" for i, (w, _) in enumerate(queries))
    assert result.returncode == 0, result.stdout + result.stderr + "\n" + where


# ---------------------------------------------------------------------------
# NetworkPolicy


def test_network_policy_limits_the_operator_to_what_it_talks_to() -> None:
    assert of_kind(render(), "NetworkPolicy") == []
    objects = render(VARIANTS["network-policy"])
    policy = one(objects, "NetworkPolicy")
    deployment = one(objects, "Deployment")
    assert policy["spec"]["podSelector"] == deployment["spec"]["selector"]
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["spec"]["ingress"] == [
        {
            "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
            "ports": [{"port": "http", "protocol": "TCP"}],
        }
    ]
    egress_ports = {(p["port"], p["protocol"]) for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert {(53, "UDP"), (53, "TCP"), (443, "TCP"), (6443, "TCP"), (5432, "TCP"), (6379, "TCP"), (4317, "TCP")} <= egress_ports
    database = [r for r in policy["spec"]["egress"] if r["ports"] == [{"port": 5432, "protocol": "TCP"}]][0]
    assert database["to"] == [{"ipBlock": {"cidr": "10.20.0.0/16"}}]
    # Without peers nothing may connect in.
    assert one(render({"networkPolicy": {"enabled": True}}), "NetworkPolicy")["spec"]["ingress"] == []


# ---------------------------------------------------------------------------
# Generated copies, Argo CD examples, Dockerfile


def test_generated_copies_are_up_to_date() -> None:
    stale = sync_generated.stale()
    assert stale == [], f"stale: {stale}; run python3 tests/chart/sync_generated.py"


def test_readme_and_argocd_cm_ship_the_health_scripts_verbatim() -> None:
    readme = (CHART_DIR / "README.md").read_text()
    block = readme.split("```yaml\n# argocd-cm")[1].split("```")[0]
    data = yaml.safe_load("# argocd-cm" + block)["data"]
    cm = yaml.safe_load((REPO / "examples" / "argocd" / "argocd-cm-health.yaml").read_text())
    values = yaml.safe_load((REPO / "examples" / "argocd" / "argo-cd-helm-values.yaml").read_text())
    assert cm["metadata"] == {
        "name": "argocd-cm",
        "namespace": "argocd",
        "labels": {"app.kubernetes.io/name": "argocd-cm", "app.kubernetes.io/part-of": "argocd"},
    }
    kubernetes_validate.validate(cm, KUBE_VERSIONS[-1], strict=True)
    for kind in KINDS:
        key = f"resource.customizations.health.{GROUP}_{kind}"
        source = (REPO / "argocd" / "health" / f"{kind}.lua").read_text()
        assert data[key] == source, f"README: {key}"
        assert cm["data"][key] == source, f"argocd-cm-health.yaml: {key}"
        assert values["configs"]["cm"][key] == source, f"argo-cd-helm-values.yaml: {key}"


def load_examples(directory: Path) -> list[dict[str, Any]]:
    docs = []
    for path in sorted(directory.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def test_argocd_applications_use_server_side_apply_and_diff() -> None:
    apps = {
        a["metadata"]["name"]: a for a in load_examples(REPO / "examples" / "argocd") if a.get("kind") == "Application"
    }
    assert set(apps) == {"archiver", "archiver-operator", "archiver-manifests"}
    for name in ("archiver-operator", "archiver-manifests"):
        app = apps[name]
        assert app["metadata"]["annotations"]["argocd.argoproj.io/compare-options"] == "ServerSideDiff=true"
        assert "ServerSideApply=true" in app["spec"]["syncPolicy"]["syncOptions"]
    assert int(apps["archiver-operator"]["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"]) < int(
        apps["archiver-manifests"]["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"]
    )
    operator = apps["archiver-operator"]["spec"]["source"]
    assert operator["path"] == "charts/archiver-operator"
    # The chart accepts the values the Application passes.
    with helm.Chart.load(CHART_DIR) as chart:
        chart.validate_schema(operator["helm"]["valuesObject"])
    manifests = apps["archiver-manifests"]["spec"]["source"]
    assert manifests["path"] == "examples"
    assert "deletion-request.yaml" in manifests["directory"]["exclude"]
    assert (REPO / manifests["path"] / "deletion-request.yaml").exists()


def test_example_manifests_carry_the_sync_waves() -> None:
    waves = {}
    for doc in load_examples(REPO / "examples"):
        annotations = doc["metadata"].get("annotations", {})
        waves[doc["kind"]] = annotations
    assert waves["RetentionPolicy"]["argocd.argoproj.io/sync-wave"] == "1"
    assert waves["PartitionSchedule"]["argocd.argoproj.io/sync-wave"] == "1"
    assert waves["ArchiverShard"]["argocd.argoproj.io/sync-wave"] == "2"
    assert "argocd.argoproj.io/sync-wave" not in waves["DeletionRequest"]
    assert "Prune=false" in waves["DeletionRequest"]["argocd.argoproj.io/sync-options"]


def test_dockerfile_runs_the_binary_as_a_numeric_non_root_user() -> None:
    text = (REPO / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert stages[0].startswith("rust:1.95-bookworm"), stages
    assert len(stages) >= 2, "multi-stage build"
    final = text[text.rindex("\nFROM ") :]
    # runAsNonRoot can only be verified for a numeric user.
    assert re.search(r"^USER\s+65532(:65532)?\s*$", final, re.M), "final stage runs as 65532"
    assert re.search(r'^ENTRYPOINT\s+\["/usr/local/bin/archiver-operator"\]', final, re.M)
    ignore = (REPO / ".dockerignore").read_text().split()
    assert "target" in ignore or "/target" in ignore


def test_chart_packages_with_its_crds_and_readme(tmp_path: Path) -> None:
    import tarfile

    archive = helm.package(CHART_DIR, destination=tmp_path)
    names = set(tarfile.open(archive).getnames())
    for member in ("Chart.yaml", "values.yaml", "values.schema.json", "README.md", "templates/NOTES.txt", "dashboards/archiver.json"):
        assert f"archiver-operator/{member}" in names, member
    assert {n for n in names if n.startswith("archiver-operator/crds/")} == {
        f"archiver-operator/crds/{p.name}" for p in (REPO / "crds").glob("*.yaml")
    }
    with helm.Chart.load_archive(Path(archive).read_bytes()) as chart:
        assert chart.render({}, name="archiver-operator", namespace=NAMESPACE)
