"""Rendering the chart with the real Helm library (helm-python-sdk embeds
Helm's Go SDK as libhelm_c; nothing is downloaded at run time)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "archiver-operator"
RELEASE = "archiver-operator"
NAMESPACE = "archiver-system"

# Values of the variants every structural test runs on.
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "monitoring": {
        "metrics": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus"}},
            "podMonitor": {"enabled": True},
            "prometheusRule": {"enabled": True, "alertLabels": {"team": "platform"}},
        },
        "grafana": {"dashboard": {"enabled": True}},
    },
    "network-policy": {
        "networkPolicy": {
            "enabled": True,
            "ingressFrom": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
            ],
            "egress": {
                "database": {
                    "ports": [5432],
                    "to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}],
                },
                "extra": [{"ports": [{"port": 4317, "protocol": "TCP"}]}],
            },
        }
    },
    "single-namespace": {
        "watchNamespace": "archiver",
        "rbac": {"aggregateToDefaultRoles": False},
        "metrics": {"podMonitor": {"enabled": True}},
    },
    "everything": {
        "image": {
            "repository": "registry.example.com/archiver-operator",
            "digest": "sha256:" + "ab" * 32,
        },
        "imagePullSecrets": [{"name": "regcred"}],
        "replicaCount": 3,
        "logFormat": "text",
        "suppressionSalt": {"existingSecret": "archiver-salt", "key": "salt"},
        "cacheInvalidateUrls": [
            "http://api.web.svc.cluster.local:8080/internal/cache/invalidate",
            "http://status.web.svc.cluster.local/invalidate",
        ],
        "alertKeyPatterns": ["alert:{tenant}:{server}:*", "mute:{tenant}:{server}"],
        "erasure": {
            "outOfScopeTables": ["support_tickets", "billing.invoices"],
            "extraRedis": [
                {"secretName": "alert-router-redis", "key": "url"},
                {"secretName": "status-page-redis", "key": "dsn"},
            ],
        },
        "workers": {
            "image": "registry.example.com/archiver-operator:worker",
            "databaseSecret": {"name": "archiver-db-workers", "key": "dsn"},
            "namespaces": ["archiver-eu", "archiver-us"],
        },
        "rbac": {"secretNames": ["redis-eu-0", "redis-us-0"], "configMapNames": ["privacy"]},
        "extraEnv": [{"name": "RUST_LOG", "value": "info,archiver_operator=debug"}],
        "podAnnotations": {"example.com/scrape": "true"},
        "podLabels": {"team": "platform"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}],
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "priorityClassName": "system-cluster-critical",
        "metrics": {
            "serviceMonitor": {"enabled": True},
            "podMonitor": {"enabled": True},
            "prometheusRule": {
                "enabled": True,
                "additionalRules": [
                    {"alert": "ArchiverViewsBehind", "expr": "max(archiver_views_lag_seconds) > 600", "for": "10m"}
                ],
            },
        },
        "networkPolicy": {"enabled": True},
        "grafana": {"dashboard": {"enabled": True, "namespace": "monitoring", "annotations": {"grafana_folder": "Archiver"}}},
    },
}


def render(values: dict[str, Any] | None = None, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    """Every object the chart renders (templates only; CRDs: see crds())."""
    with helm.Chart.load(CHART_DIR) as chart:
        manifests = chart.render(copy.deepcopy(values or {}), name=RELEASE, namespace=namespace)
    objects = []
    for path, text in sorted(manifests.items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                objects.append(doc)
    return objects


def notes(values: dict[str, Any] | None = None) -> str:
    with helm.Chart.load(CHART_DIR) as chart:
        manifests = chart.render(copy.deepcopy(values or {}), name=RELEASE, namespace=NAMESPACE)
    return manifests[f"{CHART_DIR.name}/templates/NOTES.txt"]


def crds() -> list[dict[str, str]]:
    """The chart's CRD files as Helm loads them: [{name, filename, data}]."""
    with helm.Chart.load(CHART_DIR) as chart:
        return chart.crds


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = of_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


@pytest.fixture(params=sorted(VARIANTS), ids=sorted(VARIANTS))
def variant(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    return request.param, VARIANTS[request.param]
