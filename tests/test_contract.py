"""The OpenAPI document against the server: schemathesis (every check: status codes, response
bodies and headers, content types, positive and negative data, authentication, 405s, stateful
links) runs against a real uvicorn process with API keys, for a bounded time, and must report
no failure (finding 6 of the abuse probe: 12 distinct failures then)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.test_processes import Server

ADMIN, READER = "contract-admin", "contract-reader"
CONFIG = Path(__file__).parent / "contract" / "schemathesis.toml"
DEMO = {"name": "demo", "task": "regression", "n_features": 3, "cell": "lstm", "hidden_size": 32,
        "norm": {"method": "streaming", "preset": "online"},
        "optimizer": {"name": "adam", "lr": 0.005}, "window": 16, "seed": 0}


@pytest.fixture
def db13(own_redis: str) -> Iterator[str]:
    """Database 13 of a Redis this session started: schemathesis creates models of any name."""
    url = own_redis.rsplit("/", 1)[0] + "/13"
    redis.Redis.from_url(url).flushdb()
    yield url
    redis.Redis.from_url(url).flushdb()


def test_schemathesis_finds_no_failure(db13: str, tmp_path: Path) -> None:
    # small limits keep the models schemathesis creates quick to train; the contract is the same
    server = Server(db13, STREAMNORM_API_KEYS=ADMIN, STREAMNORM_READ_KEYS=READER,
                    STREAMNORM_MAX_UPDATE_MS="100", STREAMNORM_MAX_STATE_BYTES=str(4 * 2**20))
    # every check runs (schemathesis's default); --checks would override the per-operation
    # settings of tests/contract/schemathesis.toml
    try:  # the documented examples name the model "demo": make it real
        auth = {"Authorization": f"Bearer {ADMIN}"}
        assert httpx.post(f"{server.url}/models", json=DEMO, headers=auth).status_code == 201
        run = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run",
             f"{server.url}/openapi.json", "--header", f"Authorization: Bearer {ADMIN}",
             "--max-time", "75", "--max-examples", "30", "--seed", "0",
             "--request-timeout", "20", "--no-color"],
            cwd=tmp_path, capture_output=True, text=True, timeout=150)
        summary = run.stdout[-6000:]
        assert run.returncode == 0, summary
        assert "passed" in summary and "failed" not in summary.split("SUMMARY")[-1], summary
        assert server.proc.poll() is None  # still serving
    finally:
        server.kill()
