"""docker/k8s.yaml checked offline.

The built-in kinds (Deployment, Service, PodDisruptionBudget) are validated by
`kubernetes-validate` against the Kubernetes OpenAPI schemas it bundles, in strict mode
(an unknown or misspelt field fails), for the oldest and newest versions checked here.
The custom resources (KEDA's ScaledObject, the Prometheus Operator's ServiceMonitor) have
no schema in that package (it says so: SchemaNotFoundError, asserted below): their
metadata is validated against the core ObjectMeta schema and the ServiceMonitor's
selector against the core LabelSelector schema, and the fields this file uses against
the small schemas below, written from those projects' CRDs (field names and types, no
unknown field). Then what no schema knows: the pieces refer to each other (labels,
named ports, the scale target), the probes ask real routes with timeouts that hold
under load, the autoscaler's query names a metric the service exports, every
EMBQUANT_* variable is a real setting, and no key is written in the file.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

kv = pytest.importorskip("kubernetes_validate")
from kubernetes_validate import utils as kvu  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "docker" / "k8s.yaml"
CORE_KINDS = {"Deployment", "Service", "PodDisruptionBudget"}
#: the oldest Kubernetes checked (still supported by the cloud providers) and the newest bundled
VERSIONS = ["1.30", kvu.major_minor(kvu.latest_version())]


def _docs() -> list[dict]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


def _by_kind() -> dict[str, dict]:
    out: dict[str, dict] = {}
    for d in _docs():
        assert d["kind"] not in out, f"two {d['kind']} documents"
        out[d["kind"]] = d
    return out


def _core_validator(name: str, version: str) -> jsonschema.Validator:
    """A validator for one definition of the bundled (strict) core schemas, e.g. ObjectMeta."""
    from referencing import Registry, Resource

    defs = kvu.schema_contents(f"kubernetes-json-schema/v{version}.0-local-strict/_definitions.json", version)
    assert name in defs["$defs"], name
    registry = Resource.from_contents(defs) @ Registry()
    return jsonschema.Draft202012Validator({"$ref": f"{defs['$id']}#/$defs/{name}"}, registry=registry)


def test_manifest_has_every_piece():
    assert set(_by_kind()) == {"Deployment", "Service", "PodDisruptionBudget", "ServiceMonitor", "ScaledObject"}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("kind", sorted(CORE_KINDS))
def test_core_kinds_valid_strict(kind, version):
    doc = _by_kind()[kind]
    assert kv.validate(doc, version, strict=True) == version


@pytest.mark.parametrize("version", VERSIONS)
def test_validator_rejects_broken_documents(version):
    """The validator is not vacuous: the same Deployment with a misspelt field, a wrong
    type or a missing required field fails."""
    dep = _by_kind()["Deployment"]
    c = dep["spec"]["template"]["spec"]["containers"][0]
    typo = copy.deepcopy(dep)
    typo["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = c["readinessProbe"]
    wrong_type = copy.deepcopy(dep)
    wrong_type["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["timeoutSeconds"] = "5s"
    no_selector = copy.deepcopy(dep)
    del no_selector["spec"]["selector"]
    for bad in (typo, wrong_type, no_selector):
        with pytest.raises(kvu.ValidationError):
            kv.validate(bad, version, strict=True)


# -- custom resources -------------------------------------------------------------------
_STR = {"type": "string"}
_INT = {"type": "integer"}
_SCALING_RULES = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "stabilizationWindowSeconds": {"type": "integer", "minimum": 0, "maximum": 3600},
        "selectPolicy": {"enum": ["Max", "Min", "Disabled"]},
        "policies": {"type": "array", "minItems": 1, "items": {
            "type": "object", "additionalProperties": False, "required": ["type", "value", "periodSeconds"],
            "properties": {"type": {"enum": ["Pods", "Percent"]}, "value": {"type": "integer", "minimum": 1},
                           "periodSeconds": {"type": "integer", "minimum": 1, "maximum": 1800}}}},
    },
}
#: keda.sh/v1alpha1 ScaledObject (KEDA 2.x), the fields this manifest may use
SCALED_OBJECT = {
    "type": "object", "required": ["spec"],
    "properties": {"spec": {
        "type": "object", "additionalProperties": False, "required": ["scaleTargetRef", "triggers"],
        "properties": {
            "scaleTargetRef": {"type": "object", "additionalProperties": False, "required": ["name"],
                               "properties": {"apiVersion": _STR, "kind": _STR, "name": _STR, "envSourceContainerName": _STR}},
            "pollingInterval": _INT, "cooldownPeriod": _INT, "initialCooldownPeriod": _INT,
            "idleReplicaCount": _INT, "minReplicaCount": _INT, "maxReplicaCount": _INT,
            "advanced": {"type": "object", "additionalProperties": False, "properties": {
                "restoreToOriginalReplicaCount": {"type": "boolean"},
                "horizontalPodAutoscalerConfig": {"type": "object", "additionalProperties": False, "properties": {
                    "name": _STR,
                    "behavior": {"type": "object", "additionalProperties": False,
                                 "properties": {"scaleUp": _SCALING_RULES, "scaleDown": _SCALING_RULES}}}}}},
            "triggers": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "required": ["type", "metadata"],
                "properties": {
                    "type": _STR, "name": _STR, "useCachedMetrics": {"type": "boolean"},
                    "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                    # KEDA reads trigger metadata as strings only
                    "metadata": {"type": "object", "additionalProperties": _STR},
                    "authenticationRef": {"type": "object", "required": ["name"],
                                          "properties": {"name": _STR, "kind": _STR}}}}},
        }}},
}
#: monitoring.coreos.com/v1 ServiceMonitor, the fields this manifest may use
_DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
_SECRET_KEY = {"type": "object", "additionalProperties": False, "required": ["key"],
               "properties": {"name": _STR, "key": _STR, "optional": {"type": "boolean"}}}
SERVICE_MONITOR = {
    "type": "object", "required": ["spec"],
    "properties": {"spec": {
        "type": "object", "additionalProperties": False, "required": ["selector", "endpoints"],
        "properties": {
            "selector": {"type": "object"},  # a core LabelSelector: checked with the core schema
            "jobLabel": _STR,
            "namespaceSelector": {"type": "object", "additionalProperties": False,
                                  "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": _STR}}},
            "endpoints": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False,
                "properties": {
                    "port": _STR, "targetPort": {"type": ["string", "integer"]}, "path": _STR,
                    "scheme": {"enum": ["http", "https"]}, "interval": _DURATION, "scrapeTimeout": _DURATION,
                    "honorLabels": {"type": "boolean"},
                    "authorization": {"type": "object", "additionalProperties": False,
                                      "properties": {"type": _STR, "credentials": _SECRET_KEY}},
                    "bearerTokenSecret": _SECRET_KEY}}},
        }}},
}


def test_custom_resources_have_no_bundled_schema():
    """Why the two schemas above exist: kubernetes-validate knows only built-in kinds."""
    docs = _by_kind()
    for kind in ("ScaledObject", "ServiceMonitor"):
        with pytest.raises(kvu.SchemaNotFoundError):
            kv.validate(docs[kind], VERSIONS[-1], strict=True)


@pytest.mark.parametrize("kind,schema,api", [("ScaledObject", SCALED_OBJECT, "keda.sh/v1alpha1"),
                                              ("ServiceMonitor", SERVICE_MONITOR, "monitoring.coreos.com/v1")])
def test_custom_resources_valid(kind, schema, api):
    doc = _by_kind()[kind]
    assert doc["apiVersion"] == api
    jsonschema.Draft7Validator(schema).validate(doc)
    _core_validator("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", VERSIONS[-1]).validate(doc["metadata"])
    # the schemas catch a misspelt field
    bad = copy.deepcopy(doc)
    bad["spec"]["minReplicas" if kind == "ScaledObject" else "endpoint"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(bad)


def test_service_monitor_selector_is_a_label_selector():
    sel = _by_kind()["ServiceMonitor"]["spec"]["selector"]
    v = _core_validator("io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector", VERSIONS[-1])
    v.validate(sel)
    with pytest.raises(jsonschema.ValidationError):
        v.validate({"matchLabel": sel["matchLabels"]})


# -- what no schema knows ---------------------------------------------------------------
def _matches(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels selectors are checked here"
    return bool(selector["matchLabels"]) and all(labels.get(k) == v for k, v in selector["matchLabels"].items())


def _container() -> dict:
    (c,) = _by_kind()["Deployment"]["spec"]["template"]["spec"]["containers"]
    return c


def test_pieces_refer_to_each_other():
    d = _by_kind()
    dep, svc, pdb, sm, so = (d[k] for k in ("Deployment", "Service", "PodDisruptionBudget", "ServiceMonitor", "ScaledObject"))
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert _matches(dep["spec"]["selector"], pod_labels)
    assert _matches({"matchLabels": svc["spec"]["selector"]}, pod_labels)
    assert _matches(pdb["spec"]["selector"], pod_labels)
    # the ServiceMonitor selects Services (by their labels) and names one of their ports
    assert _matches(sm["spec"]["selector"], svc["metadata"]["labels"])
    svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
    container_ports = {p["name"]: p["containerPort"] for p in _container()["ports"]}
    for ep in sm["spec"]["endpoints"]:
        assert ep["port"] in svc_ports
    for p in svc_ports.values():
        assert p["targetPort"] in container_ports
    ref = so["spec"]["scaleTargetRef"]
    assert (ref.get("apiVersion"), ref.get("kind", "Deployment"), ref["name"]) == \
        (dep["apiVersion"], dep["kind"], dep["metadata"]["name"])
    assert 1 <= so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"]
    # a PDB that can never be met would block every node drain
    assert pdb["spec"].get("maxUnavailable", 0) >= 1 or pdb["spec"]["minAvailable"] < so["spec"]["minReplicaCount"]


def test_gpu_and_security():
    c = _container()
    pod = _by_kind()["Deployment"]["spec"]["template"]["spec"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    sc = pod["securityContext"]
    assert sc["runAsNonRoot"] is True
    dockerfile = (ROOT / "docker" / "Dockerfile.gpu").read_text()
    uid = re.search(r"useradd .*--uid (\d+)", dockerfile).group(1)
    assert sc["runAsUser"] == int(uid)
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    # numba reads its cache only from a directory it can write: the image's compiled
    # kernels (NUMBA_CACHE_DIR) are copied by the init container into a writable volume
    # mounted where the server looks for them
    cache_dir = re.search(r"NUMBA_CACHE_DIR=(\S+)", dockerfile).group(1)
    assert cache_dir.startswith(re.search(r"--home-dir (\S+)", dockerfile).group(1) + "/")
    parent, leaf = cache_dir.rsplit("/", 1)
    main = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    (init,) = pod["initContainers"]
    assert init["image"] == c["image"]
    init_mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
    (vol,) = [n for n, p in main.items() if p == parent]
    assert init["command"] == ["cp", "-a", cache_dir, init_mounts[vol] + "/"]
    assert "emptyDir" in {v["name"]: v for v in pod["volumes"]}[vol]
    assert "/tmp" in main.values()


def test_probes_ask_real_routes_with_sane_timeouts():
    from embquant.api import create_app
    from embquant.settings import Settings

    paths = set(create_app(Settings()).openapi()["paths"])
    c = _container()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["http"] == Settings().port == 8000
    for name in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = c[name]
        assert probe["httpGet"]["path"] in paths, name
        assert probe["httpGet"]["port"] in ports, name
        # /healthz took 1.35 s under load
        assert probe["timeoutSeconds"] >= 5, name
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # the start-up probe covers a kernel compile on a CPU unlike the build host's (~1 min on 2 cores)
    sp = c["startupProbe"]
    assert sp["periodSeconds"] * sp["failureThreshold"] >= 180


def test_env_is_real_settings_and_holds_no_secret():
    from embquant.settings import Settings

    fields = {f"EMBQUANT_{n.upper()}" for n in Settings.model_fields}
    dep = _by_kind()["Deployment"]
    env = _container()["env"]
    for e in env:
        assert e["name"] in fields, e["name"]
    values = {e["name"]: e for e in env}
    Settings(**{k[len("EMBQUANT_"):].lower(): v["value"] for k, v in values.items() if "value" in v})
    keys = values["EMBQUANT_API_KEYS"]
    assert "value" not in keys and keys["valueFrom"]["secretKeyRef"]["optional"] is True
    assert "kind: Secret" not in MANIFEST.read_text()
    # the drain ends before the kubelet's SIGKILL: grace period less the preStop sleep
    pre = _container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre[0] == "sleep"
    grace = float(values["EMBQUANT_GRACEFUL_TIMEOUT_S"]["value"])
    assert grace < dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] - float(pre[1])


def test_autoscaler_query_names_an_exported_metric():
    from prometheus_client.parser import text_string_to_metric_families

    from embquant.api import create_app
    from embquant.settings import Settings

    body, _ = create_app(Settings()).state.metrics.render(None)
    exported = {f.name: f.type for f in text_string_to_metric_families(body.decode())}
    so = _by_kind()["ScaledObject"]
    (trig,) = so["spec"]["triggers"]
    assert trig["type"] == "prometheus"
    names = set(re.findall(r"\b(embquant_[a-z_]+)", trig["metadata"]["query"]))
    assert names and names <= set(exported)
    assert all(exported[n] == "gauge" for n in names)
    assert names & {"embquant_queue_depth", "embquant_queue_expected_wait_seconds"}
    assert float(trig["metadata"]["threshold"]) > 0
    # the query's `service` label is the one the Prometheus Operator gives the Service's targets
    svc = _by_kind()["Service"]["metadata"]["name"]
    for value in re.findall(r'service="([^"]+)"', trig["metadata"]["query"]):
        assert value == svc
