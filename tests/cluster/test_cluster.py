"""The cluster path: cluster/*.yaml validated offline, and on this one machine a two-node Ray
Train run that loses a node, the fake autoscaler scaling for a sweep, and `ray job submit`.

Tests that start Ray run it in subprocesses, with free ports and their own RAY_TMPDIR, and stop
only the processes they started (their process group and anything under their temp dir): the
session's `ray_session` and any other Ray on the machine are never touched (`ray stop` would
kill every Ray here, so it is never called).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.conftest import FAST_RAY_ENV, tiny_config, tiny_raw

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
BIN = Path(sys.executable).parent
CLOUD_YAMLS = [CLUSTER / "aws.yaml", CLUSTER / "gcp.yaml"]


def load_module(name: str) -> ModuleType:
    """cluster/<name>.py (cluster/ is not a package: it holds the launcher YAMLs)."""
    spec = importlib.util.spec_from_file_location(f"cluster_{name}", CLUSTER / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


validate = load_module("validate")


# -- offline: the launcher YAMLs ------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(CLUSTER.glob("*.yaml")), ids=lambda p: p.name)
def test_every_cluster_yaml_passes_rays_validation_and_ours(path: Path) -> None:
    assert validate.check_file(path) == []


def test_the_sweeps_driver_resource_is_what_the_heads_offer() -> None:
    assert validate.driver_resources() == ["sslray_driver"]  # sweeps/methods_imagenet.yaml
    for path in [*CLOUD_YAMLS, CLUSTER / "local_fake.yaml"]:
        raw = yaml.safe_load(path.read_text())
        head = raw["available_node_types"][raw["head_node_type"]]["resources"]
        assert head["sslray_driver"] >= 1 and head["CPU"] >= 1, path.name


@pytest.mark.parametrize("path", CLOUD_YAMLS, ids=lambda p: p.name)
def test_cloud_yaml_shape(path: Path) -> None:
    text = path.read_text()
    header = text.split("\ncluster_name:")[0]
    for command in ("ray up", "ray submit", "cluster/run_sweep.py", "ray job submit",
                    "ray dashboard", "ray down", "--address auto"):
        assert command in header, f"{path.name} header lacks {command!r}"
    raw = yaml.safe_load(text)
    types = raw["available_node_types"]
    workers = {k: v for k, v in types.items() if k != raw["head_node_type"]}
    gpu = {k: v for k, v in workers.items() if v["resources"].get("GPU", 0) >= 1}
    assert gpu and any("GPU" not in v["resources"] for v in workers.values())  # + a CPU type
    provider = raw["provider"]["type"]
    for name, node in gpu.items():
        assert node["min_workers"] == 0 < node["max_workers"], name
        assert validate._is_spot(provider, node["node_config"]), f"{name} is not spot"
        assert any("gpu]" in c for c in node["worker_setup_commands"])  # the faiss-gpu extra
    assert not validate._is_spot(provider, types[raw["head_node_type"]]["node_config"])
    assert raw["idle_timeout_minutes"] > 0 and raw["file_mounts"]["~/sslray"] == "."
    starts = raw["head_start_ray_commands"] + raw["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)
    assert "RAY_AUTH_MODE=disabled" not in text
    if provider == "aws":  # Ray adds SSH + intra-cluster; nothing else may be opened
        assert not raw["provider"]["security_group"].get("IpPermissions")


def bad_copy(tmp_path: Path, src: Path, edit: Any) -> Path:
    raw = yaml.safe_load(src.read_text())
    edit(raw)
    out = tmp_path / src.name
    out.write_text(src.read_text().split("\ncluster_name:")[0] + "\n" + yaml.safe_dump(raw))
    return out


def test_a_bad_aws_yaml_is_rejected_naming_the_node_type_and_key(tmp_path: Path) -> None:
    def edit(raw: dict[str, Any]) -> None:
        raw["provider"]["security_group"]["IpPermissions"] = [
            {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
             "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
            {"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265,
             "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
        ]
        types = raw["available_node_types"]
        types["gpu_1x_spot"]["min_workers"] = 9  # max_workers is 8
        types["gpu_8x_spot"]["resources"] = {"CPU": 64}  # a p3.16xlarge without its GPUs
        types["cpu_worker"]["resources"]["sslray_driver"] = 1
        types["cpu_worker"]["node_config"]["InstanceMarketOptions"] = {"MarketType": "spot"}
        del types["head"]["resources"]["sslray_driver"]
        raw["head_start_ray_commands"][1] = raw["head_start_ray_commands"][1].replace(
            "RAY_AUTH_MODE=token", "RAY_AUTH_MODE=disabled")
        raw["setup_commands"].append("export AWS_SECRET_ACCESS_KEY=abc")

    problems = validate.check_file(bad_copy(tmp_path, CLUSTER / "aws.yaml", edit))
    text = "\n".join(problems)
    assert "provider.security_group.IpPermissions[1]: port 8265/tcp is open to the internet" in text
    assert "IpPermissions[0]" not in text  # SSH from anywhere is the one allowed rule
    assert "available_node_types.gpu_1x_spot.max_workers: min_workers (9) > max_workers (8)" in text
    assert ("available_node_types.gpu_8x_spot.resources.GPU: the node type runs on GPU hardware "
            "(p3.16xlarge) but declares no GPU resource") in text
    assert "available_node_types.cpu_worker.resources.sslray_driver: a spot" in text
    assert "available_node_types.head.resources.sslray_driver: the head must offer" in text
    assert "head_start_ray_commands: RAY_AUTH_MODE=disabled" in text
    assert "looks like an AWS key variable" in text
    assert len(problems) == 7, text


def test_a_bad_gcp_yaml_is_rejected(tmp_path: Path) -> None:
    def edit(raw: dict[str, Any]) -> None:
        types = raw["available_node_types"]
        del types["gpu_1x_preemptible"]["resources"]["GPU"]  # a g2 (L4) machine
        types["head"]["node_config"]["scheduling"] = {"preemptible": True}
        raw["provider"]["gcp_credentials"] = {"type": "service_account", "credentials": "{}"}

    src = CLUSTER / "gcp.yaml"
    path = bad_copy(tmp_path, src, edit)
    path.write_text(path.read_text().replace("--allow=tcp:22 --source", "--allow=tcp:22,tcp:8265 "
                                                                         "--source"))
    text = "\n".join(validate.check_file(path))
    assert "available_node_types.gpu_1x_preemptible.resources.GPU: the node type runs on GPU " \
           "hardware (g2-standard-8)" in text
    assert "available_node_types.head.node_config: the head (which hosts the trial drivers) " \
           "must not be spot / preemptible" in text
    assert "provider.gcp_credentials: no credentials in the YAML" in text
    assert "(header) firewall rule opens tcp:22,tcp:8265 to 0.0.0.0/0" in text


def test_rays_schema_errors_come_through(tmp_path: Path) -> None:
    def typo(raw: dict[str, Any]) -> None:
        raw["setup_command"] = raw.pop("setup_commands")

    text = "\n".join(validate.check_file(bad_copy(tmp_path, CLUSTER / "aws.yaml", typo)))
    assert "Additional properties are not allowed ('setup_command' was unexpected)" in text

    def half_gpu(raw: dict[str, Any]) -> None:
        raw["available_node_types"]["gpu_1x_spot"]["resources"]["GPU"] = 0.5

    text = "\n".join(validate.check_file(bad_copy(tmp_path, CLUSTER / "aws.yaml", half_gpu)))
    assert "available_node_types.gpu_1x_spot.resources.GPU: 0.5 is not of type 'integer'" in text


def test_validate_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert validate.main([]) == 0
    out = capsys.readouterr().out
    assert out.count(": ok (Ray's") == len(list(CLUSTER.glob("*.yaml")))
    bad = bad_copy(tmp_path, CLUSTER / "local_fake.yaml",
                   lambda raw: raw["available_node_types"]["cpu_worker"].update(min_workers=3))
    assert validate.main([str(bad)]) == 2
    assert "cpu_worker.max_workers: min_workers (3) > max_workers (2)" in capsys.readouterr().out


# -- the `ray submit` entry script ----------------------------------------------------------------


def test_run_sweep_finds_the_project_and_the_sweep(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    run_sweep = load_module("run_sweep")
    monkeypatch.delenv("SSLRAY_PROJECT", raising=False)
    assert run_sweep.find_project(None) == REPO  # next to the script (a checkout)
    monkeypatch.setattr(run_sweep, "HERE", tmp_path / "home")  # as on the head: ~/run_sweep.py
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="no sslray checkout found"):
        run_sweep.find_project(None)
    assert run_sweep.find_project(str(REPO)) == REPO  # --project
    monkeypatch.setenv("SSLRAY_PROJECT", str(REPO))
    assert run_sweep.find_project(None) == REPO
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "sslray").symlink_to(REPO)  # where file_mounts put it
    monkeypatch.delenv("SSLRAY_PROJECT")
    assert run_sweep.find_project(None) == REPO
    quick = run_sweep.resolve_sweep("sweeps/quickstart.yaml", REPO, tmp_path)
    assert quick == str(REPO / "sweeps" / "quickstart.yaml")
    assert run_sweep.resolve_sweep("quickstart", REPO, tmp_path) == "quickstart"  # a name


def test_run_sweep_without_sslray_says_so(tmp_path: Path) -> None:
    script = tmp_path / "run_sweep.py"  # `ray submit` uploads this one file
    shutil.copy(CLUSTER / "run_sweep.py", script)
    out = subprocess.run([sys.executable, "-S", str(script), "quickstart", "--project", str(REPO)],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 1
    assert "sslray is not installed in this Python" in out.stderr
    assert "pip install -c constraints.txt -e ." in out.stderr


# -- helpers for tests that start Ray -------------------------------------------------------------


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def ray_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The environment of everything a test starts: fast Ray settings, its own RAY_TMPDIR (so
    `--address auto` and the address file never meet another Ray on this machine), this venv."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(FAST_RAY_ENV)
    env.update(RAY_TMPDIR=str(tmp), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
               PYTHONPATH=str(REPO), TUNE_GLOBAL_CHECKPOINT_S="1", **extra)
    return env


def short_tmp() -> Path:
    """Ray's socket paths must stay under 107 characters: a short dir, not pytest's tmp_path."""
    return Path(tempfile.mkdtemp(prefix="sslr", dir="/tmp"))


def kill_own(tmp: Path, proc: subprocess.Popen[Any] | None) -> None:
    """Stop what a test started: SIGTERM its process group (a new session, so nobody else's),
    give it a few seconds, then SIGKILL whatever of that group or of our temp dir (raylets, GCS,
    workers of our cluster name it on their command line) is still alive. Nothing else."""
    group = proc.pid if proc is not None else None
    if group is not None:
        try:
            os.killpg(group, signal.SIGTERM)
            proc.wait(timeout=5)  # type: ignore[union-attr]
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    deadline = time.time() + 10
    while (left := ours(tmp, group)) and time.time() < deadline:
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()


def ours(tmp: Path, group: int | None = None) -> list[int]:
    """Live (not zombie) processes in `group` or whose command line names `tmp`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp ...
        if fields[0] == "Z":
            continue
        if (group is not None and int(fields[2]) == group) or str(tmp) in cmd:
            found.append(int(entry.name))
    return found


class LocalHead:
    """`ray start --head --block` on free ports in its own temp dir and process group."""

    def __init__(self, *args: str, port: int | None = None, dashboard: bool = False,
                 **env: str) -> None:
        self.tmp = short_tmp()
        self.env = ray_env(self.tmp, **env)
        self.port, self.dash, agent, client = free_ports(4)
        self.port = port or self.port
        self.dashboard = dashboard
        cmd = [str(BIN / "ray"), "start", "--head", "--block", f"--port={self.port}",
               f"--dashboard-port={self.dash}", f"--dashboard-agent-listen-port={agent}",
               f"--ray-client-server-port={client}", f"--include-dashboard={dashboard}",
               "--object-store-memory=200000000", "--disable-usage-stats", *args]
        self.log = open(self.tmp / "head.log", "w")  # closed in stop()
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.address = self._wait_address()
        if dashboard:
            self._wait_dashboard()

    def _wait_address(self) -> str:
        path = self.tmp / "ray" / "ray_current_cluster"
        deadline = time.time() + 60
        while time.time() < deadline:
            if path.is_file() and path.read_text().strip():
                return path.read_text().strip()
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"ray start failed:\n{self.logs()}")

    def _wait_dashboard(self) -> None:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/api/version", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise AssertionError(f"no dashboard at {self.url}:\n{self.logs()}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.dash}"

    def logs(self) -> str:
        self.log.flush()
        return (self.tmp / "head.log").read_text()[-3000:]

    def status(self) -> dict[str, int]:
        """Alive nodes per node type, from `ray status` (the autoscaler's view)."""
        out = subprocess.run([str(BIN / "ray"), "status", f"--address={self.address}"],
                             env=self.env, capture_output=True, text=True, timeout=60)
        return parse_status(out.stdout)

    def stop(self) -> None:
        kill_own(self.tmp, self.proc)
        self.log.close()
        keep = os.environ.get("SSLRAY_KEEP_RAY_LOGS")  # a folder: keep the head's Ray logs there
        if keep:
            shutil.copytree(self.tmp / "ray" / "session_latest" / "logs",
                            Path(keep) / self.tmp.name, dirs_exist_ok=True)
            shutil.copy(self.tmp / "head.log", Path(keep) / self.tmp.name)
        shutil.rmtree(self.tmp, ignore_errors=True)


def parse_status(text: str) -> dict[str, int]:
    """`ray status` -> {node type: count} over its Active (and Idle) sections."""
    counts: dict[str, int] = {}
    section = None
    for line in text.splitlines():
        head = line.strip().rstrip(":")
        if line.strip().endswith(":") and head in ("Active", "Idle", "Pending", "Recent failures"):
            section = head
            continue
        m = re.match(r"^\s+(\d+)\s+(\S+)\s*$", line)
        if m and section in ("Active", "Idle"):
            counts[m.group(2)] = counts.get(m.group(2), 0) + int(m.group(1))
        elif line and not line.startswith(" "):
            section = None
    return counts


def test_parse_status() -> None:
    text = ("======== Autoscaler status ========\nNode status\n-----\nActive:\n"
            " 1 ray.head.default\n 2 cpu_worker\nPending:\n (no pending nodes)\n"
            "Recent failures:\n (no failures)\n\nResources\n-----\nUsage:\n 1.0/3.0 CPU\n")
    assert parse_status(text) == {"ray.head.default": 1, "cpu_worker": 2}


def smoke_sweep(tmp_path: Path, storage: str, name: str = "cluster_smoke", **res: Any) -> Path:
    raw = {
        "name": name,
        "base": tiny_raw(),
        "seeds": [0],
        "resources": {"workers": 1, "cpus_per_worker": 1, **res},
        "storage": storage,
        "aim": False,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def assert_sweep_landed(sweep_dir: Path, trials: int = 1) -> dict[str, Any]:
    meta = json.loads((sweep_dir / "sweep.json").read_text())
    dirs = [p for p in sweep_dir.iterdir() if (p / "config.json").is_file()]
    assert meta["smoke"] and meta["trials"] == trials and len(dirs) == trials
    for d in dirs:
        last = json.loads((d / "result.json").read_text().splitlines()[-1])
        assert last["epoch"] == 1 and 0.0 <= last["eval/knn_top1"] <= 1.0
        assert list(d.glob("train-*/final.pt"))
    return meta


# -- multi-node on one machine: ray.cluster_utils.Cluster ------------------------------------------


def multinode_scenario(out: Path, run_dir: Path) -> None:
    """(Runs in a subprocess.) A 0-CPU head and two 1-CPU nodes; a 2-worker MoCo run (shuffle BN
    over gloo) must put one worker on each node; after the first checkpoint one node is killed
    and a new one added, and the run must resume from the checkpoint and finish."""
    import ray
    from ray.cluster_utils import Cluster

    from sslray.training.worker import run_training

    agent, = free_ports(1)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "dashboard_agent_listen_port": agent,
        "object_store_memory": 150 * 1024**2})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, logging_level=logging.WARNING)
    cfg = tiny_config(train={"epochs": 6, "batch_size": 32},
                      method={"bn": "shuffle"},
                      data={"synthetic_size": 1024},
                      eval={"knn_k": 10, "at_init": False, "linear_fast": False},
                      # 0.5 CPU each: PACK would put both workers on one node; STRICT_SPREAD
                      # must place one per node.
                      resources={"workers": 2, "cpus_per_worker": 0.5, "max_failures": 2,
                                 "placement_strategy": "STRICT_SPREAD"})
    result: dict[str, Any] = {"node_ids": [n.node_id for n in nodes]}

    def train() -> None:
        try:
            result["metrics"] = run_training(cfg, run_dir, verbose=False)
        except Exception as exc:  # reported to the test
            result["error"] = f"{type(exc).__name__}: {exc}"

    groups: dict[str, list[str]] = {}  # placement (group id + nodes) -> nodes, in order seen

    def watch_groups() -> None:
        for pg_id, pg in ray.util.placement_group_table().items():
            placed = {i: n for i, n in (pg.get("bundles_to_node_id") or {}).items() if n}
            if pg["state"] == "CREATED" and len(placed) == 2:
                where = [placed[i] for i in sorted(placed)]
                groups.setdefault(f"{pg_id}:{','.join(where)}", where)

    start = time.time()
    thread = threading.Thread(target=train, daemon=True)
    thread.start()
    # Written when the controller registers a checkpoint (the dir alone may not be registered).
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    while not snapshot.is_file() and thread.is_alive():
        watch_groups()
        time.sleep(0.2)
    watch_groups()
    result["checkpoint_s"] = time.time() - start
    victim = nodes[0]
    # main thread only (docs/ray.md#multi-node-on-one-machine)
    cluster.remove_node(victim, allow_graceful=False)
    result["removed"] = victim.node_id
    new = cluster.add_node(num_cpus=1)
    result["added"] = new.node_id
    while thread.is_alive():
        watch_groups()
        thread.join(0.2)
    result["groups"] = list(groups.values())
    result["wall_s"] = time.time() - start
    out.write_text(json.dumps(result))
    ray.shutdown()
    cluster.shutdown()


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_two_nodes_one_worker_each_and_a_lost_node_resumes(tmp_path: Path) -> None:
    tmp = short_tmp()
    out, run_dir = tmp_path / "multinode.json", tmp_path / "run"
    run_dir.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys;"
         " from tests.cluster.test_cluster import multinode_scenario as m;"
         " from pathlib import Path; m(Path(sys.argv[1]), Path(sys.argv[2]))",
         str(out), str(run_dir)],
        env=ray_env(tmp), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=200)
    finally:
        kill_own(tmp, proc)
        shutil.rmtree(tmp, ignore_errors=True)
    assert proc.returncode == 0 and out.is_file(), log[-4000:]
    r = json.loads(out.read_text())
    assert "error" not in r, r["error"]
    first, second = r["node_ids"], r["groups"]
    assert sorted(second[0]) == sorted(first)  # one worker per node, both nodes used
    survivor = next(n for n in first if n != r["removed"])
    assert len(second) >= 2 and sorted(second[-1]) == sorted([survivor, r["added"]])
    m = r["metrics"]
    assert m["epoch"] == 6.0
    assert 1.0 <= m["train/resumed_from_epoch"] < 6.0  # resumed from a checkpoint, not from 0
    assert 0.0 <= m["eval/knn_top1"] <= 1.0
    print(f"multi-node: checkpoint after {r['checkpoint_s']:.1f} s, node {r['removed'][:8]} "
          f"removed, {r['added'][:8]} added; groups {[[n[:8] for n in g] for g in second]}; "
          f"resumed from epoch {m['train/resumed_from_epoch']:.0f}; {r['wall_s']:.1f} s")


# -- the fake multi-node autoscaler ----------------------------------------------------------------


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_fake_autoscaler_adds_a_node_for_a_sweep_and_removes_it_when_idle(tmp_path: Path) -> None:
    from ray._private.services import get_node_ip_address

    port, = free_ports(1)
    config = yaml.safe_load((CLUSTER / "local_fake.yaml").read_text())
    config["provider"]["gcs_address"] = f"{get_node_ip_address()}:{port}"
    cfg_path = tmp_path / "local_fake.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    head_res = config["available_node_types"]["ray.head.default"]["resources"]
    custom = {k: v for k, v in head_res.items() if k != "CPU"}
    sweep = smoke_sweep(tmp_path, str(tmp_path / "sweeps"), driver_resource="sslray_driver")
    submit = tmp_path / "submit"  # `ray submit` uploads run_sweep.py alone and runs it there
    submit.mkdir()
    shutil.copy(CLUSTER / "run_sweep.py", submit / "run_sweep.py")
    head = LocalHead(f"--num-cpus={head_res['CPU']}", f"--resources={json.dumps(custom)}",
                     f"--autoscaling-config={cfg_path}", port=port, RAY_FAKE_CLUSTER="1",
                     AUTOSCALER_UPDATE_INTERVAL_S="1")
    timeline: list[tuple[float, dict[str, int]]] = []
    try:
        before: dict[str, int] = {}
        deadline = time.time() + 30
        while not before and time.time() < deadline:  # the monitor's first report
            before = head.status()
        t0 = time.time()
        run = subprocess.Popen(
            [sys.executable, str(submit / "run_sweep.py"), str(sweep), "--smoke", "--no-table",
             "--project", str(REPO)],
            env=head.env, cwd=submit, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        while run.poll() is None and time.time() - t0 < 180:
            timeline.append((time.time() - t0, head.status()))
            time.sleep(1)
        log = run.communicate(timeout=30)[0]
        assert run.returncode == 0, log[-4000:]
        done = time.time() - t0
        after: dict[str, int] = {}
        while time.time() - t0 < done + 60:
            after = head.status()
            timeline.append((time.time() - t0, after))
            if after and not after.get("cpu_worker"):
                break
            time.sleep(1)
    finally:
        head.stop()
    during = max((s.get("cpu_worker", 0) for t, s in timeline if t < done), default=0)
    up = next((t for t, s in timeline if s.get("cpu_worker")), None)
    down = timeline[-1][0]
    print(f"autoscaler: before {before}; cpu_worker nodes during the sweep: {during} (first "
          f"seen at {up} s); sweep done at {done:.1f} s; after {after} at {down:.1f} s")
    assert before == {"ray.head.default": 1}
    assert during >= 1  # the Train worker (1 CPU) does not fit on the head: a node was added
    assert after == {"ray.head.default": 1}  # and removed after idle_timeout_minutes
    assert_sweep_landed(tmp_path / "sweeps" / "cluster_smoke-smoke")
    assert "run_sweep: sslray sweep" in log and "--address auto" in log


# -- `ray job submit` against a local head ---------------------------------------------------------


@pytest.fixture(scope="module")
def job_head() -> Iterator[LocalHead]:
    # Fake credentials for the S3 test's moto server (workers read them from the environment).
    head = LocalHead("--num-cpus=2", '--resources={"sslray_driver": 1}', dashboard=True,
                     AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                     AWS_DEFAULT_REGION="us-east-1")
    try:
        yield head
    finally:
        head.stop()


def job_submit(head: LocalHead, *entrypoint: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "ray"), "job", "submit", f"--address={head.url}", f"--working-dir={REPO}",
         "--", *entrypoint],
        env=head.env, capture_output=True, text=True, timeout=200, cwd=REPO)


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_job_submit_runs_a_smoke_sweep_into_its_storage(job_head: LocalHead,
                                                        tmp_path: Path) -> None:
    sweep = smoke_sweep(tmp_path, str(tmp_path / "sweeps"), driver_resource="sslray_driver")
    t0 = time.time()
    out = job_submit(job_head, "sslray", "sweep", str(sweep), "--smoke", "--address", "auto",
                     "--no-table")
    wall = time.time() - t0
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert "succeeded" in out.stdout + out.stderr
    meta = assert_sweep_landed(tmp_path / "sweeps" / "cluster_smoke-smoke")
    assert meta["resources"]["driver_resource"] == "sslray_driver"
    print(f"job submit: succeeded in {wall:.1f} s")


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_job_submit_sweep_to_an_s3_endpoint(job_head: LocalHead, tmp_path: Path) -> None:
    moto_server = pytest.importorskip(
        "moto.server", reason="moto[server] is not installed (pip install 'moto[server]'): the "
        "S3-compatible endpoint for this test")
    import boto3
    import pyarrow.fs as pafs

    port, = free_ports(1)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                     aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket="sslray-test")
        uri = (f"s3://sslray-test/sweeps?endpoint_override=127.0.0.1:{port}&scheme=http"
               f"&region=us-east-1")
        sweep = smoke_sweep(tmp_path, uri, name="s3_smoke")
        out = job_submit(job_head, "sslray", "sweep", str(sweep), "--smoke", "--address", "auto",
                         "--no-table")
        assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
        fs = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http",
                               region="us-east-1", access_key="testing", secret_key="testing")
        local = tmp_path / "synced"
        pafs.copy_files("sslray-test/sweeps/s3_smoke-smoke", str(local), source_filesystem=fs)
    finally:
        server.stop()
    assert_sweep_landed(local)
    from analysis import load_sweep  # the synced copy of the bucket is what the tables read

    frame = load_sweep(local)
    assert len(frame) == 1 and frame["status"].iloc[0] == "finished"
