"""docker/k8s/*.yaml: valid for the API server, and consistent with the daemon they run.

No cluster runs here. Each document is validated against the Kubernetes JSON schemas that
kubernetes-validate bundles (offline), strictly: an unknown field is an error, as it is for
``kubectl apply --validate=strict``. The rules the schemas cannot state are checked by
:func:`problems`: those the API server applies on top (Bidirectional propagation only in
privileged containers, ...) and those that make the example work (the probes reach the
endpoint the daemon serves, the memory limit holds the daemon's budget, ...).
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from alluxiofuse.cli.main import parser
from alluxiofuse.config import OPTION_NAMES, build_config
from alluxiofuse.limits import MiB
from alluxiofuse.options import (
    DEFAULT_METRICS_ADDR,
    parse_duration,
    parse_metrics_addr,
    parse_size,
    split_addr,
)

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "docker" / "k8s"
# 1.29: the first release with native sidecars (SidecarContainers) on by default; and the
# newest release the package knows.
VERSIONS = ("1.29", kubernetes_validate.latest_version())

# How much memory the daemon takes beyond its budget, as designed.
RSS_ABOVE_BUDGET = 150 * MiB
HEADROOM = 256 * MiB  # for the kernel's page cache of the spool, and slack
ENTRYPOINT = "/usr/local/bin/alluxiofuse-entrypoint"  # where docker/Dockerfile puts it
_QUANTITY = re.compile(r"^(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_UNITS = {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
          "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name
        return False


def load_documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def quantity(text: str | int) -> int:
    m = _QUANTITY.match(str(text))
    assert m, f"not a memory quantity this test reads: {text!r}"
    return int(m.group(1)) * _UNITS[m.group(2)]


def option(args: list[str], name: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE`` in ``args`` (the last one wins)."""
    value = None
    for i, arg in enumerate(args):
        if arg == f"--{name}" and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
    return value


def unknown_args(args: list[str]) -> list[str]:
    """What `alluxiofuse mount SOURCE MOUNTPOINT ARGS` would not accept."""
    try:
        _, unknown = parser().parse_known_args(
            ["mount", "SOURCE", "MOUNTPOINT", *args])
    except SystemExit:  # argparse said why on stderr: a value missing, ...
        return args
    return unknown


def pod_specs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    specs = []
    for doc in docs:
        if doc["kind"] == "Pod":
            specs.append(doc["spec"])
        elif doc["kind"] in ("Job", "Deployment", "StatefulSet", "DaemonSet"):
            specs.append(doc["spec"]["template"]["spec"])
    return specs


def is_alluxiofuse(container: dict[str, Any]) -> bool:
    return "alluxiofuse" in container["image"].split("/")[-1]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def mount_of(container: dict[str, Any], path: str) -> dict[str, Any] | None:
    """The volumeMount holding ``path`` (the deepest one)."""
    best = None
    for m in container.get("volumeMounts", []):
        root = m["mountPath"].rstrip("/")
        if (path == root or path.startswith(root + "/")) and (
                best is None or len(root) > len(best["mountPath"].rstrip("/"))):
            best = m
    return best


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any] | None:
    return next((d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name), None)


def volume_file(docs: list[dict[str, Any]], spec: dict[str, Any], container: dict[str, Any],
                path: str) -> str | None:
    """The text a container reads at ``path``, when a ConfigMap or Secret volume holds it."""
    mount = mount_of(container, path)
    if mount is None:
        return None
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    key = path[len(mount["mountPath"].rstrip("/")) + 1:]
    for field, kind, name_field in (("configMap", "ConfigMap", "name"),
                                    ("secret", "Secret", "secretName")):
        if field in volume:
            doc = find(docs, kind, volume[field][name_field])
            if doc is None:
                return None
            return (doc.get("data") or {}).get(key) or (doc.get("stringData") or {}).get(key)
    return None


def config_problems(text: str) -> tuple[list[str], dict[str, Any]]:
    """Whether the daemon accepts this TOML config; its raw values."""
    raw = tomllib.loads(text)
    problems = []
    known = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name in OPTION_NAMES or name in ("ufs_options", "alluxio_properties"):
            known[name] = value
        else:
            problems.append(f"config: unknown option {key!r}")
    build_config(known, mount=False)  # raises ConfigError on a bad value
    secrets = {"key", "secret", "token", "password", "aws_secret_access_key"}
    if secrets & set(raw.get("ufs_options", {})):
        problems.append("config: credentials in the ConfigMap (they belong in a Secret)")
    return problems, {k.replace("-", "_"): v for k, v in raw.items()}


def problems(docs: list[dict[str, Any]]) -> list[str]:
    """Every rule below that the documents break, one line each."""
    out: list[str] = []
    specs = pod_specs(docs)
    if not specs:
        return ["no pod template"]
    for spec in specs:
        inits = spec.get("initContainers", [])
        regular = spec.get("containers", [])
        # -- rules of the API server that the schema does not express
        for c in inits + regular:
            sc = c.get("securityContext", {})
            privileged = sc.get("privileged") is True
            for m in c.get("volumeMounts", []):
                if m.get("mountPropagation") == "Bidirectional" and not privileged:
                    out.append(f"{c['name']}: Bidirectional mount propagation is available "
                               "only to privileged containers")
            if privileged and sc.get("allowPrivilegeEscalation") is False:
                out.append(f"{c['name']}: privileged with allowPrivilegeEscalation false")
            requests = c.get("resources", {}).get("requests", {})
            limits = c.get("resources", {}).get("limits", {})
            if "memory" in requests and "memory" in limits and \
                    quantity(requests["memory"]) > quantity(limits["memory"]):
                out.append(f"{c['name']}: memory request above its limit")
        for c in regular:
            if "restartPolicy" in c:
                out.append(f"{c['name']}: restartPolicy is for init containers only")

        # -- the alluxiofuse sidecar
        if any(is_alluxiofuse(c) for c in regular):
            out.append("alluxiofuse must be a native sidecar (an init container), not a "
                       "regular container")
        sidecars = [c for c in inits if is_alluxiofuse(c)]
        if len(sidecars) != 1:
            out.append(f"expected one alluxiofuse init container, found {len(sidecars)}")
            continue
        (side,) = sidecars
        if side.get("restartPolicy") != "Always":
            out.append("alluxiofuse: an init container without restartPolicy: Always runs to "
                       "completion before the trainer starts: it must be a sidecar")
        env = env_of(side)
        args = [str(a) for a in side.get("args", [])]

        # Every argument is one `alluxiofuse mount` takes (SOURCE and MOUNTPOINT come from
        # the environment, as the entrypoint reads them).
        for arg in unknown_args(args):
            out.append(f"alluxiofuse: unknown option or argument {arg!r}")
        if not env.get("ALLUXIOFUSE_SOURCE"):
            out.append("alluxiofuse: no ALLUXIOFUSE_SOURCE")

        # The config file: from a ConfigMap, accepted by the daemon.
        config: dict[str, Any] = {}
        if env.get("ALLUXIOFUSE_CONFIG"):
            text = volume_file(docs, spec, side, env["ALLUXIOFUSE_CONFIG"])
            if text is None:
                out.append(f"alluxiofuse: {env['ALLUXIOFUSE_CONFIG']} is in no ConfigMap here")
            else:
                found, config = config_problems(text)
                out += found

        # Credentials: a file from a Secret, never a value in the manifest's env.
        creds = env.get("AWS_SHARED_CREDENTIALS_FILE")
        if creds and volume_file(docs, spec, side, creds) is None:
            out.append(f"alluxiofuse: {creds} is in no Secret here")
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            if env.get(name):
                out.append(f"alluxiofuse: {name} in plain text")

        # The shared mount: Bidirectional out of the sidecar, HostToContainer into the
        # others, on an emptyDir of this pod.
        mountpoint = env.get("ALLUXIOFUSE_MOUNTPOINT", "/mnt/data")
        shared = next((m for m in side.get("volumeMounts", [])
                       if m["mountPath"].rstrip("/") == mountpoint.rstrip("/")), None)
        if shared is None:
            out.append(f"alluxiofuse: no volume mounted at its mountpoint {mountpoint}")
        else:
            if shared.get("mountPropagation") != "Bidirectional":
                out.append("alluxiofuse: the shared volume needs mountPropagation: "
                           "Bidirectional, or the FUSE mount stays in the sidecar")
            volume = next(v for v in spec["volumes"] if v["name"] == shared["name"])
            if "emptyDir" not in volume:
                out.append("alluxiofuse: the shared volume should be an emptyDir of the pod")
            users = [(c, m) for c in regular for m in c.get("volumeMounts", [])
                     if m["name"] == shared["name"]]
            if not users:
                out.append("no container uses the mount")
            for c, m in users:
                if m.get("mountPropagation") != "HostToContainer":
                    out.append(f"{c['name']}: mountPropagation HostToContainer needed to see "
                               "the FUSE mount")

        # /dev/fuse: privileged containers get the node's devices; else a hostPath.
        if not side.get("securityContext", {}).get("privileged"):
            fuse = [v for v in spec["volumes"] if v.get("hostPath", {}).get("path") == "/dev/fuse"
                    and v["hostPath"].get("type") == "CharDevice"]
            if not any(m["mountPath"] == "/dev/fuse" and m["name"] == v["name"]
                       for v in fuse for m in side.get("volumeMounts", [])):
                out.append("alluxiofuse: no /dev/fuse (not privileged, no CharDevice hostPath)")

        # Probes: where the daemon serves, reachable from the kubelet (the pod's IP).
        addr = parse_metrics_addr(option(args, "metrics-addr") or config.get("metrics_addr")
                                  or DEFAULT_METRICS_ADDR)
        host, served = split_addr(addr) if addr != "off" else ("localhost", 0)
        if host == "localhost" or (host not in ("", "0.0.0.0", "::") and _is_loopback(host)):
            out.append(f"alluxiofuse: metrics on {addr}: the kubelet probes the pod's IP")
        ports = {p.get("name"): p["containerPort"] for p in side.get("ports", [])}
        for probe, path in (("startupProbe", "/readyz"), ("readinessProbe", "/readyz"),
                            ("livenessProbe", "/healthz")):
            get = side.get(probe, {}).get("httpGet")
            if get is None:
                out.append(f"alluxiofuse: no {probe} httpGet {path}")
                continue
            port = ports.get(get["port"], get["port"])
            if get.get("path") != path or port != served or get.get("host"):
                out.append(f"alluxiofuse: {probe} asks {get.get('host', '')}:{port}"
                           f"{get.get('path')}, the daemon serves {path} on {addr}")

        # preStop: the entrypoint's stop, or the same unmount spelt out.
        pre = side.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
        if pre not in ([ENTRYPOINT, "stop"], ["alluxiofuse", "umount", "--lazy", mountpoint]):
            out.append(f"alluxiofuse: preStop should unmount: {shlex.join(pre or [])!r}")
        grace = spec.get("terminationGracePeriodSeconds", 30)
        drain = parse_duration(config.get("drain_timeout", 60))
        if grace < drain + 10:
            out.append(f"terminationGracePeriodSeconds {grace} leaves no time to drain "
                       f"uploads ({drain}s)")

        # Memory: the limit holds the budget, the RSS above it, and headroom.
        limit_text = side.get("resources", {}).get("limits", {}).get("memory")
        if limit_text is None:
            out.append("alluxiofuse: no memory limit")
        else:
            limit = quantity(limit_text)
            budget_text = option(args, "memory-budget") or config.get("memory_budget")
            budget = parse_size(budget_text) if budget_text else limit // 2
            if limit < budget + RSS_ABOVE_BUDGET + HEADROOM:
                out.append(f"alluxiofuse: memory limit {limit_text} < budget "
                           f"{budget // MiB} MiB + 150 MiB + {HEADROOM // MiB} MiB headroom")

        # The spool's emptyDir holds cache_size, or the kubelet evicts the pod first.
        spool = mount_of(side, str(config.get("cache_dir", "/var/cache/alluxiofuse")))
        if spool is not None and "cache_size" in config:
            volume = next(v for v in spec["volumes"] if v["name"] == spool["name"])
            size_limit = (volume.get("emptyDir") or {}).get("sizeLimit")
            if size_limit and quantity(size_limit) <= parse_size(config["cache_size"]):
                out.append(f"spool: emptyDir sizeLimit {size_limit} not above cache_size")

        # The disk page store is worth keeping beyond the pod, and sharing on the node.
        pages_dir = config.get("disk_cache_dir")
        if pages_dir:
            store = mount_of(side, str(pages_dir))
            volume = next((v for v in spec["volumes"] if store and v["name"] == store["name"]),
                          None)
            if volume is None:
                out.append(f"disk page store: no volume mounted at {pages_dir}")
            elif "hostPath" not in volume and "persistentVolumeClaim" not in volume:
                out.append("disk page store: an emptyDir dies with the pod; use a hostPath "
                           "(or a node-local volume) that the node's pods share")
    return out


# -- the schemas

@pytest.mark.parametrize("version", VERSIONS)
def test_every_document_is_valid_for_the_api_server(version: str) -> None:
    docs = load_documents()
    assert {d["kind"] for d in docs} >= {"Job", "ConfigMap", "Secret"}
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def sidecar(doc: dict[str, Any]) -> dict[str, Any]:
    side: dict[str, Any] = doc["spec"]["template"]["spec"]["initContainers"][0]
    return side


def job() -> dict[str, Any]:
    return next(d for d in load_documents() if d["kind"] == "Job")


def test_the_validator_rejects_a_misspelt_field() -> None:
    doc = job()
    mount = sidecar(doc)["volumeMounts"][0]
    mount["mountPropogation"] = mount.pop("mountPropagation")
    with pytest.raises(kubernetes_validate.ValidationError, match="mountPropogation"):
        kubernetes_validate.validate(doc, VERSIONS[0], strict=True)


def test_the_validator_rejects_a_wrong_type() -> None:
    doc = job()
    sidecar(doc)["readinessProbe"]["periodSeconds"] = "10"
    with pytest.raises(kubernetes_validate.ValidationError, match="'10' is not of type"):
        kubernetes_validate.validate(doc, VERSIONS[0], strict=True)


def test_native_sidecars_need_a_recent_schema() -> None:
    """restartPolicy on a container is a field of 1.28 and later: the schemas know releases."""
    with pytest.raises(kubernetes_validate.ValidationError, match="restartPolicy"):
        kubernetes_validate.validate(job(), "1.27", strict=True)


# -- the rules beyond the schemas

def test_the_manifests_break_no_rule() -> None:
    assert problems(load_documents()) == []


def _move_sidecar_to_containers(doc: dict[str, Any]) -> None:
    spec = doc["spec"]["template"]["spec"]
    side = spec.pop("initContainers")[0]
    del side["restartPolicy"]
    spec["containers"].append(side)


def _set(path: str, value: Any) -> Any:
    """A mutation setting ``path`` (dots and list indices) under the pod spec; None deletes."""
    def mutate(doc: dict[str, Any]) -> None:
        node: Any = doc["spec"]["template"]["spec"]
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        for p in parents:
            node = node[p]
        if value is None:
            del node[last]
        else:
            node[last] = value
    return mutate


@pytest.mark.parametrize(("mutate", "expected"), [
    (_set("initContainers.0.restartPolicy", None), "without restartPolicy: Always"),
    (_move_sidecar_to_containers, "must be a native sidecar"),
    (_set("initContainers.0.securityContext.privileged", False),
     "Bidirectional mount propagation is available only to privileged"),
    (_set("initContainers.0.volumeMounts.0.mountPropagation", "HostToContainer"),
     "needs mountPropagation: Bidirectional"),
    (_set("containers.0.volumeMounts.0.mountPropagation", None), "HostToContainer needed"),
    (_set("initContainers.0.readinessProbe.httpGet.port", 9848), "readinessProbe asks"),
    (_set("initContainers.0.startupProbe.httpGet.path", "/healthz"), "startupProbe asks"),
    (_set("initContainers.0.args.1", "127.0.0.1:9847"), "the kubelet probes the pod's IP"),
    (_set("initContainers.0.args.3", "2GiB"), "memory limit 2Gi < budget 2048 MiB"),
    (_set("initContainers.0.resources.limits.memory", "1200Mi"), "memory limit 1200Mi"),
    (_set("initContainers.0.lifecycle", None), "preStop should unmount"),
    (_set("initContainers.0.args.2", "--memory-budgt"), "unknown option or argument"),
    (_set("initContainers.0.env.2.value", "/etc/other/x.toml"), "is in no ConfigMap"),
    (_set("terminationGracePeriodSeconds", 30), "leaves no time to drain"),
    (_set("volumes.2", {"name": "pages", "emptyDir": {}}), "an emptyDir dies with the pod"),
    (_set("initContainers.0.volumeMounts.4", None),
     "no volume mounted at /var/cache/alluxiofuse-pages"),
])
def test_a_broken_rule_is_reported(mutate: Any, expected: str) -> None:
    docs = load_documents()
    mutate(next(d for d in docs if d["kind"] == "Job"))
    found = problems(docs)
    assert any(expected in p for p in found), found


def test_a_bad_config_is_reported() -> None:
    docs = load_documents()
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    toml = cm["data"]["alluxiofuse.toml"]
    assert toml.rstrip().splitlines()[-1].startswith("client_kwargs")  # in [ufs_options]
    cm["data"]["alluxiofuse.toml"] = f'page_cahce_size = 1\n{toml}secret = "x"\n'
    found = problems(docs)
    assert "config: unknown option 'page_cahce_size'" in found
    assert "config: credentials in the ConfigMap (they belong in a Secret)" in found


def test_the_image_default_config_is_accepted() -> None:
    found, _ = config_problems((REPO / "docker" / "alluxiofuse.toml").read_text())
    assert found == []

