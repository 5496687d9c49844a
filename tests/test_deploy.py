"""The Kubernetes manifests (deploy/k8s) and the server image agree with the code: kinds and
apiVersions, the StatefulSet's process ids and addresses, real CLI commands, real settings,
the whole config/ directory in the ConfigMap. A typo in a manifest fails here, not in a pod."""

from __future__ import annotations

import re
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from cdp_triggers.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
API = {"StatefulSet": "apps/v1", "Deployment": "apps/v1", "Service": "v1", "Secret": "v1",
       "ConfigMap": "v1", "Kustomization": "kustomize.config.k8s.io/v1beta1"}
POD_INDEX_LABEL = "metadata.labels['apps.kubernetes.io/pod-index']"


def docs() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        out += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return out


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for _, d in docs() if d["kind"] == kind]


def pod_specs() -> list[tuple[str, dict[str, Any]]]:
    return [(d["metadata"]["name"], d["spec"]["template"]["spec"])
            for d in of_kind("StatefulSet") + of_kind("Deployment")]


def containers() -> list[tuple[str, dict[str, Any]]]:
    return [(f"{name}/{c['name']}", c) for name, spec in pod_specs()
            for c in spec.get("initContainers", []) + spec["containers"]]


def test_every_manifest_parses_with_a_known_kind_and_api_version() -> None:
    found = docs()
    assert {d["kind"] for _, d in found} >= {"StatefulSet", "Deployment", "Service",
                                              "Kustomization", "Secret"}
    for name, d in found:
        assert API.get(d["kind"]) == d["apiVersion"], (name, d["kind"], d["apiVersion"])
        if d["kind"] != "Kustomization":
            assert d["metadata"]["name"], name
    kust = of_kind("Kustomization")[0]
    for res in kust["resources"]:  # every resource exists; examples are not applied
        assert (K8S / res).is_file(), res
    assert "secrets.example.yaml" not in kust["resources"]


def test_workloads_select_their_own_pods() -> None:
    for d in of_kind("StatefulSet") + of_kind("Deployment"):
        sel = d["spec"]["selector"]["matchLabels"]
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert sel.items() <= labels.items(), d["metadata"]["name"]
    for svc in of_kind("Service"):
        pods = [d for d in of_kind("StatefulSet") + of_kind("Deployment")
                if svc["spec"]["selector"].items()
                <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(pods) == 1, svc["metadata"]["name"]
        ports = {p["name"]: p["containerPort"]
                 for c in pods[0]["spec"]["template"]["spec"]["containers"]
                 for p in c.get("ports", [])}
        for p in svc["spec"]["ports"]:
            assert ports.get(p["targetPort"]) == p["port"] or p["targetPort"] in ports, p


def _arg(args: list[str], *flags: str) -> str:
    for i, a in enumerate(args):
        if a in flags:
            return args[i + 1]
    raise AssertionError(f"none of {flags} in {args}")


def test_statefulset_process_ids_and_addresses_agree_with_replicas() -> None:
    [sts] = of_kind("StatefulSet")
    name, replicas = sts["metadata"]["name"], sts["spec"]["replicas"]
    spec = sts["spec"]["template"]["spec"]
    [flow] = spec["containers"]
    args = flow["args"]
    # -i is the pod ordinal, through the downward API
    assert _arg(args, "-i", "--process-id") == "$(POD_INDEX)"
    env = {e["name"]: e for e in flow["env"]}
    assert env["POD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == POD_INDEX_LABEL
    # -a lists every pod, in ordinal order, through the headless Service, on the Bytewax port
    [svc] = [s for s in of_kind("Service") if s["metadata"]["name"] == sts["spec"]["serviceName"]]
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"]
    port = {p["name"]: p["containerPort"] for p in flow["ports"]}["bytewax"]
    assert {p["port"] for p in svc["spec"]["ports"]} >= {port}
    addresses = _arg(args, "-a", "--addresses").split(";")
    svc_name = svc["metadata"]["name"]
    assert addresses == [f"{name}-{i}.{svc_name}:{port}" for i in range(replicas)]
    # all processes start together; enough sink partitions for every worker
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    workers = int(_arg(args, "-w", "--workers"))
    assert int(env["CDP_SINK_PARTITIONS"]["value"]) >= replicas * workers
    # recovery on each pod's own volume, where CDP_RECOVERY_DIR points
    [claim] = sts["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in flow["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == env["CDP_RECOVERY_DIR"]["value"]
    # the config is validated before the flow starts, from the same mount
    [init] = spec["initContainers"]
    assert init["command"] == ["cdp-triggers", "validate"]
    init_env = {e["name"]: e.get("value") for e in init["env"]}
    assert init_env["CDP_CONFIG_DIR"] == env["CDP_CONFIG_DIR"]["value"] == mounts["config"]


def test_metrics_port_is_annotated_for_scraping_and_probed() -> None:
    for d in of_kind("StatefulSet") + of_kind("Deployment"):
        spec = d["spec"]["template"]["spec"]
        [c] = spec["containers"]
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        for probe in ("readinessProbe", "livenessProbe"):
            get = c[probe]["httpGet"]
            assert get["port"] in ports and get["path"] in ("/healthz", "/readyz")
        if "CDP_METRICS_PORT" not in env:
            continue
        ann = d["spec"]["template"]["metadata"]["annotations"]
        assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/path"] == "/metrics"
        assert int(ann["prometheus.io/port"]) == int(env["CDP_METRICS_PORT"]) \
            == ports["metrics"]


@cache
def cli_help(cmd: str) -> str:
    done = subprocess.run([sys.executable, "-m", "cdp_triggers.cli", cmd, "--help"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, f"`cdp-triggers {cmd}` is not a command: {done.stderr[-500:]}"
    return done.stdout


@pytest.mark.parametrize("where, container", containers(), ids=lambda x: x
                         if isinstance(x, str) else "")
def test_every_container_runs_a_real_cli_command(where: str, container: dict) -> None:
    command = container["command"] + container.get("args", [])
    if command[:3] == ["python", "-m", "bytewax.run"]:
        assert command[3] == "flows.live:flow", where
        return
    assert command[0] == "cdp-triggers", where
    text = cli_help(command[1])
    for flag in (a for a in command[2:] if a.startswith("-")):
        assert re.search(rf"(?<![\w-]){re.escape(flag)}\b", text), (where, flag)


def _check_setting(name: str, where: str) -> None:
    assert name.startswith("CDP_"), (where, name)
    field, *nested = name.removeprefix("CDP_").lower().split("__")
    info = Settings.model_fields.get(field)
    assert info is not None, f"{where}: {name} is not a setting (no Settings.{field})"
    if nested:  # CDP_PROVIDER_OPTIONS__X__Y: only dict settings take nested keys
        assert "dict" in str(info.annotation), (where, name)


def test_every_env_var_is_a_setting() -> None:
    for where, c in containers():
        args = " ".join(c["command"] + c.get("args", []))
        for e in c.get("env", []):
            if e["name"].startswith("CDP_"):
                _check_setting(e["name"], where)
            else:  # a helper only for argument expansion, e.g. POD_INDEX for -i
                assert f"$({e['name']})" in args, (where, e["name"])
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:  # the Secret key is the variable's own name
                assert ref["key"] == e["name"], (where, e["name"])
    for secret in of_kind("Secret"):
        for key in secret["stringData"]:
            _check_setting(key, f"Secret {secret['metadata']['name']}")


def test_secrets_referenced_are_in_the_example() -> None:
    keys = {(s["metadata"]["name"], k) for s in of_kind("Secret") for k in s["stringData"]}
    names = {s["metadata"]["name"] for s in of_kind("Secret")}
    for where, c in containers():
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert (ref["name"], ref["key"]) in keys, (where, ref)
        for src in c.get("envFrom", []):
            assert src["secretRef"]["name"] in names, where


def config_files() -> set[str]:
    """Every file the config loader reads (a list in the manifests is written by
    ``python deploy/k8s/sync_config.py``)."""
    cfg = ROOT / "config"
    return {str(p.relative_to(cfg)) for folder in ("", "triggers/", "segments/")
            for ext in ("yaml", "yml") for p in cfg.glob(f"{folder}*.{ext}")}


def test_the_configmap_holds_the_whole_config_directory() -> None:
    [kust] = of_kind("Kustomization")
    [gen] = [g for g in kust["configMapGenerator"] if g["name"] == "cdp-config"]
    keys = {}
    for entry in gen["files"]:
        key, src = entry.split("=", 1)
        assert (K8S / src).resolve().is_file(), src
        keys[key] = str((K8S / src).resolve().relative_to(ROOT / "config"))
    assert set(keys.values()) == config_files()
    for name, spec in pod_specs():
        for vol in spec.get("volumes", []):
            cm = vol.get("configMap")
            if cm and cm["name"] == "cdp-config":  # keys mapped back to the config/ layout
                assert {i["key"]: i["path"] for i in cm["items"]} == keys, name


def test_server_image_has_no_embedded_database() -> None:
    text = (ROOT / "Dockerfile.server").read_text()
    assert "startswith('chdb')" in text and "pip install --no-deps ." in text
    assert "find_spec('chdb') is None" in text
    images = {c["image"] for _, c in containers()}
    assert images == {"cdp-triggers-server"}


def test_cluster_ddl_replicates_and_shards_every_raw_table_by_its_id() -> None:
    sys.path.insert(0, str(ROOT / "deploy" / "clickhouse"))
    try:
        from cluster_ddl import cluster_statements
    finally:
        sys.path.pop(0)
    from sinks.clickhouse_schema import RAW_TABLES, ddl_statements

    stmts = cluster_statements("cdp", "main")
    text = "\n".join(stmts)
    for table in RAW_TABLES:
        [local] = [s for s in stmts if f"cdp.{table}_local ON CLUSTER 'main' (" in s]
        assert f"ReplicatedReplacingMergeTree('/clickhouse/tables/{{shard}}/cdp/{table}', " \
               "'{replica}'" in local
        key = re.search(r"ORDER BY \(?([^)\n]+)", local)[1].split(",")[-1].strip()
        # the record's deterministic id (bookkeeping tables aside)
        assert key.endswith("_id") or not table.startswith("raw_"), (table, key)
        assert (f"CREATE TABLE IF NOT EXISTS cdp.{table} ON CLUSTER 'main' AS cdp.{table}_local"
                f"\nENGINE = Distributed('main', cdp, {table}_local, cityHash64({key}))") in text
    views = [s for s in ddl_statements("cdp") if s.startswith("CREATE OR REPLACE VIEW")]
    assert len(views) == text.count("CREATE OR REPLACE VIEW") and views
    assert all(" ON CLUSTER 'main' AS" in s for s in stmts if "VIEW" in s.split("\n")[0])
    assert "ENGINE = ReplacingMergeTree" not in text


def test_images_compile_the_hot_path_from_the_installed_sources() -> None:
    """Both images build the compiled hot path (``cdp_triggers.compiled``) where the
    installed package finds it, from ``/`` (so the installed sources are hashed, not
    /app's), with Cython at pyproject.toml's pin, and drop the compiler afterwards."""
    for name in ("Dockerfile", "Dockerfile.server"):
        text = (ROOT / name).read_text()
        assert "ENV CDP_COMPILED_DIR=" in text, name
        assert "cd / && cdp-triggers compile" in text, name
        assert "d.startswith('Cython')" in text and "Cython==" not in text, name
        assert "apt-get purge -y gcc" in text, name
        assert text.index("cdp-triggers compile") < text.index("\nUSER"), name
