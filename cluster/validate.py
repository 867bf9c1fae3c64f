"""Offline checks of the Ray cluster-launcher YAMLs in cluster/: Ray's own, then the ones Ray skips.

    python cluster/validate.py                      # every YAML in cluster/
    python cluster/validate.py cluster/aws.yaml     # one file; exit 2 with every problem

`ray up` runs `prepare_config` (merge the provider's defaults.yaml), asks the cloud for instance
resources, runs `validate_config` (Ray's JSON schema plus a few cross-field checks) and only then
talks to the cloud. The first and third steps need no credentials, so they run here
(docs/ray.md#offline-yaml-validation). The fake multi-node provider ships no defaults.yaml in the
wheel; its monitor runs `validate_config` alone on the full config, so that is what it gets here.

Ray does not check what this project relies on, so this module does:
- per node type `min_workers <= max_workers` (Ray checks only the sum against `max_workers`);
- a node type on GPU hardware declares a `GPU` resource, or Ray never schedules a GPU worker on it;
- the head offers the sweeps' driver resource (`resources.driver_resource`) and some CPU (each
  trial driver takes `driver_cpus` of a CPU on the same node), and no spot / preemptible node
  type offers it: a preempted driver loses its trial;
- nothing but SSH (22) is open to the internet (security-group rules, and the firewall commands
  the GCP header documents); token authentication is not switched off; no credentials in the file.

Every problem names the node type (or section) and the key, e.g.
`available_node_types.gpu_1x_spot.max_workers: min_workers (3) > max_workers (2)`.
"""

from __future__ import annotations

import copy
import logging
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

CLUSTER_DIR = Path(__file__).resolve().parent
REPO = CLUSTER_DIR.parent
# The sweeps whose trial drivers a cloud cluster must be able to place (their driver_resource).
CLOUD_SWEEPS = (REPO / "sweeps" / "methods_imagenet.yaml",)

# AWS GPU instance families (p2..p5, g3..g6, gr6) and GCP accelerator-optimised machine types.
AWS_GPU_FAMILY = re.compile(r"^(p\d+[a-z]*|g\d+[a-z]*|gr\d+[a-z]*)\.")
GCP_GPU_MACHINE = re.compile(r"^(a2|a3|a4|g2|g4)-")
OPEN_V4, OPEN_V6 = "0.0.0.0/0", "::/0"
# Strings that only a credential would put into a cluster YAML (key ids, secrets, private keys).
CREDENTIAL_PATTERNS = [
    (re.compile(r"AKIA[0-9A-Z]{16}"), "an AWS access key id"),
    (re.compile(r"(?i)aws_(secret_)?access_key(_id)?\s*[:=]"), "an AWS key variable"),
    (re.compile(r"(?i)aws_session_token\s*[:=]"), "an AWS session token"),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), "a private key"),
    (re.compile(r'"private_key"\s*:'), "a service-account key"),
    (re.compile(r"(?i)GOOGLE_APPLICATION_CREDENTIALS\s*="), "a credentials file variable"),
    (re.compile(r"(?i)RAY_AUTH_TOKEN\s*="), "a Ray auth token"),
]


def driver_resources(sweeps: Iterable[Path] = CLOUD_SWEEPS) -> list[str]:
    """The `resources.driver_resource` of each sweep file that sets one."""
    names = []
    for path in sweeps:
        raw = yaml.safe_load(Path(path).read_text()) or {}
        name = (raw.get("resources") or {}).get("driver_resource")
        if name:
            names.append(str(name))
    return sorted(set(names))


def ray_problems(raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Ray's own offline validation: (the config as `ray up` would use it, problems)."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    logging.getLogger("ray.autoscaler").setLevel(logging.WARNING)  # "setting max workers ..."
    cfg = copy.deepcopy(raw)
    try:
        if cfg.get("provider", {}).get("type") != "fake_multinode":
            cfg = prepare_config(cfg)
        validate_config(cfg)
    except jsonschema.ValidationError as exc:
        where = ".".join(str(p) for p in exc.absolute_path) or "(top level)"
        return cfg, [f"{where}: {exc.message} (Ray's schema)"]
    except (ValueError, RuntimeError, KeyError, NotImplementedError) as exc:
        return cfg, [f"(Ray's validate_config): {exc}"]
    return cfg, []


def _is_gpu_hardware(provider: str, node_config: dict[str, Any]) -> str | None:
    """What makes this node a GPU machine (for the message), or None."""
    if provider == "aws":
        itype = str(node_config.get("InstanceType", ""))
        return itype if AWS_GPU_FAMILY.match(itype) else None
    if provider == "gcp":
        if node_config.get("guestAccelerators"):
            acc = node_config["guestAccelerators"][0]
            return f"{acc.get('acceleratorCount', 1)} x {acc.get('acceleratorType', 'GPU')}"
        mtype = str(node_config.get("machineType", ""))
        return mtype if GCP_GPU_MACHINE.match(mtype) else None
    return None


def _is_spot(provider: str, node_config: dict[str, Any]) -> bool:
    if provider == "aws":
        market = node_config.get("InstanceMarketOptions") or {}
        return str(market.get("MarketType", "")).lower() == "spot"
    if provider == "gcp":
        sched = node_config.get("scheduling") or {}
        if isinstance(sched, list):  # Ray's own defaults.yaml writes a one-item list
            sched = {k: v for item in sched for k, v in item.items()}
        return bool(sched.get("preemptible")) or sched.get("provisioningModel") == "SPOT"
    return False


def node_type_problems(cfg: dict[str, Any], drivers: Iterable[str]) -> list[str]:
    problems = []
    provider = cfg.get("provider", {}).get("type", "")
    types: dict[str, Any] = cfg.get("available_node_types") or {}
    head = cfg.get("head_node_type")
    for name, node in types.items():
        where = f"available_node_types.{name}"
        lo, hi = node.get("min_workers", 0), node.get("max_workers")
        if hi is not None and lo > hi:
            problems.append(f"{where}.max_workers: min_workers ({lo}) > max_workers ({hi})")
        res = node.get("resources") or {}
        gpu_hw = _is_gpu_hardware(provider, node.get("node_config") or {})
        if gpu_hw and res.get("GPU", 0) < 1:
            problems.append(f"{where}.resources.GPU: the node type runs on GPU hardware "
                            f"({gpu_hw}) but declares no GPU resource; Ray would never place "
                            f"a GPU worker there (add GPU: <count>)")
        elif name != head and "gpu" in name.lower() and res.get("GPU", 0) < 1:
            problems.append(f"{where}.resources.GPU: a GPU worker type must declare its GPUs")
        spot = _is_spot(provider, node.get("node_config") or {})
        for d in drivers:
            if spot and res.get(d, 0) > 0:
                problems.append(f"{where}.resources.{d}: a spot / preemptible node type must not "
                                f"offer the trial-driver resource (a preempted driver loses "
                                f"its trial)")
        if name == head and spot:
            problems.append(f"{where}.node_config: the head (which hosts the trial drivers) "
                            f"must not be spot / preemptible")
    if head in types:
        res = types[head].get("resources") or {}
        for d in drivers:
            if res.get(d, 0) < 1:
                problems.append(f"available_node_types.{head}.resources.{d}: the head must offer "
                                f"the driver resource that sweeps set in resources."
                                f"driver_resource (e.g. {d}: 1 = 100 trial drivers of 0.01)")
        if drivers and res.get("CPU", 0) < 1:
            problems.append(f"available_node_types.{head}.resources.CPU: each trial driver "
                            f"takes a sliver of CPU on the node that has the driver resource; "
                            f"give the head at least CPU: 1")
    return problems


def _open_ranges(perm: dict[str, Any]) -> bool:
    v4 = any(r.get("CidrIp") == OPEN_V4 for r in perm.get("IpRanges", []) or [])
    v6 = any(r.get("CidrIpv6") == OPEN_V6 for r in perm.get("Ipv6Ranges", []) or [])
    return v4 or v6


def _only_ssh(from_port: Any, to_port: Any, proto: Any) -> bool:
    return str(proto) in ("tcp", "6") and from_port == 22 and to_port == 22


def security_problems(raw: dict[str, Any], text: str) -> list[str]:
    problems = []
    provider = raw.get("provider", {}) or {}
    perms = (provider.get("security_group") or {}).get("IpPermissions") or []
    for i, perm in enumerate(perms):
        if _open_ranges(perm) and not _only_ssh(perm.get("FromPort"), perm.get("ToPort"),
                                                 perm.get("IpProtocol")):
            ports = (f"{perm.get('FromPort')}-{perm.get('ToPort')}"
                     if perm.get("FromPort") != perm.get("ToPort") else str(perm.get("FromPort")))
            problems.append(
                f"provider.security_group.IpPermissions[{i}]: port {ports}/"
                f"{perm.get('IpProtocol')} is open to the internet (0.0.0.0/0); only SSH (22) "
                f"may be: reach the dashboard, Jobs API and GCS through `ray dashboard` (an SSH "
                f"tunnel)")
    # GCP firewall rules live outside the YAML; its header documents the gcloud commands.
    for line in text.splitlines():
        if "firewall-rules create" not in line or OPEN_V4 not in line:
            continue
        allow = re.search(r"--allow[= ](\S+)", line)
        if not allow or allow.group(1) != "tcp:22":
            problems.append(f"(header) firewall rule opens {allow.group(1) if allow else 'all'} "
                            f"to 0.0.0.0/0; only tcp:22 may be: {line.strip().lstrip('#').strip()}")
    for key in ("setup_commands", "head_setup_commands", "worker_setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands",
                "initialization_commands"):
        for cmd in raw.get(key) or []:
            if re.search(r"RAY_AUTH_MODE=[\"']?disabled", str(cmd)):
                problems.append(f"{key}: RAY_AUTH_MODE=disabled switches Ray's token "
                                f"authentication off; a cloud cluster keeps it on")
    for name, node in (raw.get("available_node_types") or {}).items():
        for cmd in node.get("worker_setup_commands") or []:
            if re.search(r"RAY_AUTH_MODE=[\"']?disabled", str(cmd)):
                problems.append(f"available_node_types.{name}.worker_setup_commands: "
                                f"RAY_AUTH_MODE=disabled switches token authentication off")
    if "gcp_credentials" in provider:
        problems.append("provider.gcp_credentials: no credentials in the YAML; give the nodes a "
                        "service account (node_config.serviceAccounts)")
    for pattern, what in CREDENTIAL_PATTERNS:
        for n, line in enumerate(text.splitlines(), 1):
            if pattern.search(line):
                problems.append(f"line {n}: looks like {what}; no credentials in a cluster YAML "
                                f"(use IAM instance profiles / service accounts)")
    return problems


def install_problems(raw: dict[str, Any]) -> list[str]:
    """Every cloud node type installs the project from file_mounts (GPU types: faiss-gpu)."""
    provider = (raw.get("provider") or {}).get("type")
    if provider not in ("aws", "gcp"):
        return []
    problems = []
    mounts = raw.get("file_mounts") or {}
    project = [remote for remote, local in mounts.items() if str(local).rstrip("/") in (".", "./")]
    if not project:
        problems.append("file_mounts: mount the project ('~/sslray': '.', run `ray up` from the "
                        "repository root)")
    if raw.get("idle_timeout_minutes") is None:
        problems.append("idle_timeout_minutes: set it, or idle GPU nodes cost money until "
                        "Ray's default (5 min) removes them")
    common = [str(c) for c in (raw.get("setup_commands") or [])]
    head = raw.get("head_node_type")
    for name, node in (raw.get("available_node_types") or {}).items():
        cmds = common if name == head or "worker_setup_commands" not in node else \
            [str(c) for c in node["worker_setup_commands"]]
        where = "setup_commands" if cmds is common else \
            f"available_node_types.{name}.worker_setup_commands"
        pip = [c for c in cmds if "pip install" in c and "-e" in c]
        if not pip or not any("constraints.txt" in c for c in pip):
            problems.append(f"{where}: no `pip install -c constraints.txt -e .` of the project "
                            f"for node type {name}")
        gpu = (node.get("resources") or {}).get("GPU", 0) >= 1
        if gpu and not any("gpu" in c and "pip install" in c for c in cmds):
            problems.append(f"{where}: GPU node type {name} does not install the gpu extra "
                            f"(faiss-gpu)")
    return problems


def check_file(path: str | Path, drivers: Iterable[str] | None = None) -> list[str]:
    """Every problem of one cluster YAML: Ray's validation, then the checks Ray skips."""
    path = Path(path)
    text = path.read_text()
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        return [f"malformed YAML: {exc}"]
    if not isinstance(raw, dict):
        return ["(top level): expected a mapping"]
    drivers = list(driver_resources() if drivers is None else drivers)
    cfg, problems = ray_problems(raw)
    problems += node_type_problems(cfg if not problems else raw, drivers)
    problems += security_problems(raw, text)
    problems += install_problems(raw)
    return problems


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    files = [Path(a) for a in args] or sorted(CLUSTER_DIR.glob("*.yaml"))
    drivers = driver_resources()
    bad = 0
    for f in files:
        problems = check_file(f, drivers)
        if problems:
            bad += 1
            print(f"{f}: {len(problems)} problem(s)")
            for p in problems:
                print(f"  - {p}")
        else:
            fake = "fake_multinode" in f.read_text()
            ray = "validate_config" if fake else "prepare_config + validate_config"
            print(f"{f}: ok (Ray's {ray}; node types, security, install; driver resource: "
                  f"{', '.join(drivers) or 'none'})")
    return 2 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
