"""``streamnorm feed`` as a user runs it: the real command in a subprocess against a real uvicorn
process (and, for ``--via stream``, a real ``streamnorm worker``), on a CSV file the test writes
and on River's bundled ``Phishing``. What the service holds afterwards is checked, not only what
the command prints."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from models import ModelSpec, OnlineLearner
from service.feed import default_spec
from service.sources import FeedError, csv_source

from .test_processes import ROOT, Server
from .test_stream_processes import FAST, WorkerProcess

ROWS = 40


def write_csv(path: Path, rows: int = ROWS) -> Path:
    """A small time series: three numeric features, a text column (left out), the target last."""
    lines = ["t,temp,site,load,target"]
    for i in range(rows):
        lines.append(f"{i / rows:.3f},{math.sin(i / 5):.4f},paris,{(i % 7) / 7:.3f},"
                     f"{math.sin((i + 1) / 5):.4f}")
    path.write_text("\n".join(lines) + "\n")
    return path


def feed(url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m service.cli feed --url URL ARGS``: its exit code, stdout and stderr."""
    return subprocess.run([sys.executable, "-m", "service.cli", "feed", "--url", url, *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200", **env})


def fresh(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def api(redis_url: str) -> Iterator[Server]:
    server = Server(redis_url)
    yield server
    server.kill(signal.SIGTERM)


@pytest.fixture
def made(api: Server) -> Iterator[list[str]]:
    """Paths (``/models/x``, ``/races/y``) of what a test created: deleted afterwards."""
    paths: list[str] = []
    yield paths
    for path in paths:
        httpx.delete(f"{api.url}{path}")
        assert httpx.get(f"{api.url}{path}").status_code == 404


def replayed(info: dict[str, Any], csv: Path) -> bytes:
    """An independent learner fed the file's rows in order on the stream ``feed``."""
    spec = ModelSpec.model_validate({k: info[k] for k in ModelSpec.model_fields if k in info})
    learner = OnlineLearner(spec)
    for line in csv.read_text().splitlines()[1:]:
        t, temp, _, load, y = line.split(",")
        learner.learn_one([float(t), float(temp), float(load)], float(y), stream="feed")
    return learner.to_bytes()


def test_a_csv_file_feeds_a_new_model_once_and_a_rerun_applies_nothing(
        api: Server, made: list[str], tmp_path: Path) -> None:
    csv, name = write_csv(tmp_path / "series.csv"), fresh("feed")
    made.append(f"/models/{name}")
    run = feed(api.url, "--csv", str(csv), "--model", name, "--create")
    assert run.returncode == 0, run.stderr
    info = httpx.get(f"{api.url}/models/{name}").json()
    assert info["updates"] == ROWS and info["version"] == ROWS
    assert info["task"] == "regression" and info["features"] == ["t", "temp", "load"]
    # every row applied once, in file order, with the numbers the file holds
    assert httpx.get(f"{api.url}/models/{name}/state").content == replayed(info, csv)
    out = run.stdout
    assert "left out: site" in out
    assert f"model {name}: version {ROWS}, {ROWS} updates" in out
    for word in ("MAE", "RMSE", "cumulative", "rolling", f"{ROWS} applied, 0 applied before"):
        assert word in out, out
    mae = info["metrics"]["MAE"]
    assert f"{mae['value']:.4g}" in out and f"{mae['rolling']:.4g}" in out

    again = feed(api.url, "--csv", str(csv), "--model", name)  # same event ids: none applied
    assert again.returncode == 0, again.stderr
    assert "0 applied, 40 applied before" in again.stdout
    assert httpx.get(f"{api.url}/models/{name}").json()["updates"] == ROWS


def test_a_bad_csv_is_refused_before_anything_is_sent(api: Server, tmp_path: Path) -> None:
    name = fresh("feed")
    bad = write_csv(tmp_path / "bad.csv")
    lines = bad.read_text().splitlines()
    lines[3] = lines[3].replace(lines[3].split(",")[1], "warm", 1)  # data row 3, column temp
    bad.write_text("\n".join(lines) + "\n")
    run = feed(api.url, "--csv", str(bad), "--model", name, "--create")
    assert run.returncode == 1
    assert "bad.csv: row 3 (line 4), column 'temp': 'warm' is not a finite number" in run.stderr
    assert httpx.get(f"{api.url}/models/{name}").status_code == 404  # not even created

    ragged = tmp_path / "ragged.csv"
    ragged.write_text("a,b,y\n1,2,3\n4,5\n")
    run = feed(api.url, "--csv", str(ragged), "--model", name, "--create")
    assert run.returncode == 1 and "row 2 (line 3) has 2 values, the header 3" in run.stderr
    run = feed(api.url, "--csv", str(tmp_path / "none.csv"), "--model", name)
    assert run.returncode == 1 and "cannot read" in run.stderr
    run = feed(api.url, "--csv", str(write_csv(tmp_path / "ok.csv")), "--model", name)
    assert run.returncode == 1 and f"no model named '{name}': pass --create" in run.stderr
    run = feed(api.url, "--csv", str(tmp_path / "ok.csv"), "--model", name, "--target", "nope")
    assert run.returncode == 1 and "has no column 'nope'" in run.stderr


def test_the_servers_refusal_is_the_error_and_the_exit_code(
        api: Server, made: list[str], tmp_path: Path, redis_url: str) -> None:
    name = fresh("feed")
    made.append(f"/models/{name}")
    assert httpx.post(f"{api.url}/models", json={
        "name": name, "task": "regression", "n_features": 2}).status_code == 201
    run = feed(api.url, "--csv", str(write_csv(tmp_path / "three.csv")), "--model", name)
    assert run.returncode == 1
    assert f"POST /models/{name}/learn: 422" in run.stderr and "(field: x)" in run.stderr
    assert httpx.get(f"{api.url}/models/{name}").json()["updates"] == 0

    keyed = Server(redis_url, STREAMNORM_API_KEYS="k-admin")  # a service that needs a key
    try:
        run = feed(keyed.url, "--csv", str(tmp_path / "three.csv"), "--model", name)
        assert run.returncode == 1
        assert "401" in run.stderr and "Authorization: Bearer" in run.stderr
        run = feed(keyed.url, "--csv", str(tmp_path / "three.csv"), "--model", name,
                   "--features", "t,load", STREAMNORM_API_KEY="k-admin")  # the key, by env
        assert run.returncode == 0, run.stderr
        assert httpx.get(f"{api.url}/models/{name}").json()["updates"] == ROWS
    finally:
        keyed.kill(signal.SIGTERM)


def test_a_river_dataset_races_every_normalization_over_http(
        api: Server, made: list[str]) -> None:
    race = fresh("ph")
    made.append(f"/races/{race}")
    run = feed(api.url, "--river", "Phishing", "--race", race, "--create", "--limit", "50")
    assert run.returncode == 0, run.stderr
    info = httpx.get(f"{api.url}/races/{race}").json()
    methods = [n["method"] for n in httpx.get(f"{api.url}/norms").json()]
    assert sorted(m["norm"] for m in info["members"]) == sorted(methods) and len(methods) == 8
    assert all(m["updates"] == 50 for m in info["members"]), info
    assert info["spec"]["task"] == "binary" and len(info["spec"]["features"]) == 9
    for member in info["members"]:
        assert member["name"] in run.stdout
    assert "Accuracy" in run.stdout and "50 applied, 0 applied before" in run.stdout
    again = feed(api.url, "--river", "Phishing", "--race", race, "--limit", "50")
    assert again.returncode == 0 and "0 applied, 50 applied before" in again.stdout
    info = httpx.get(f"{api.url}/races/{race}").json()
    assert all(m["updates"] == 50 for m in info["members"])


def test_via_stream_a_worker_applies_every_row_once(db14: str, tmp_path: Path) -> None:
    api, worker = Server(db14, **FAST), WorkerProcess(db14, "feed-worker")
    csv, model, race = write_csv(tmp_path / "s.csv"), fresh("feed"), fresh("ph")
    try:
        for _ in range(2):  # the second run sends the same event ids: nothing more applied
            run = feed(api.url, "--csv", str(csv), "--model", model, "--create", "--via",
                       "stream", "--batch", "16", "--wait", "60")
            assert run.returncode == 0, run.stderr
            assert f"model {model}: version {ROWS}, {ROWS} updates" in run.stdout
            assert httpx.get(f"{api.url}/models/{model}").json()["updates"] == ROWS
        info = httpx.get(f"{api.url}/models/{model}").json()
        assert httpx.get(f"{api.url}/models/{model}/state").content == replayed(info, csv)

        assert httpx.post(f"{api.url}/races", json={
            "name": race, "spec": default_spec_for_phishing(), "min_updates": 10,
            "members": [{"norm": "streaming"}, {"norm": "layer"}, {"norm": "none"}]}
        ).status_code == 201
        run = feed(api.url, "--river", "Phishing", "--race", race, "--limit", "50", "--via",
                   "stream", "--batch", "16")
        assert run.returncode == 0, run.stderr
        info = httpx.get(f"{api.url}/races/{race}").json()
        assert [m["updates"] for m in info["members"]] == [50, 50, 50]
        assert info["leader"] and f"{info['leader']} ★ leader" in run.stdout

        assert worker.kill(signal.SIGTERM) == 0  # no worker: the wait ends, and says so
        late = fresh("feed")
        run = feed(api.url, "--csv", str(csv), "--model", late, "--create", "--via", "stream",
                   "--wait", "1")
        assert run.returncode == 1 and "is a `streamnorm worker` running?" in run.stderr
        assert httpx.get(f"{api.url}/models/{late}").json()["updates"] == 0
    finally:
        worker.kill(signal.SIGTERM)
        api.kill(signal.SIGTERM)  # db14 is emptied after the test: models, races, streams


def default_spec_for_phishing() -> dict[str, Any]:
    from service.sources import river_source

    source = river_source("Phishing", limit=50)
    source.check()
    return default_spec(source, {"hidden_size": 8})


@pytest.mark.parametrize(("targets", "want"), [
    (["1.5", "2", "0.25"], {"task": "regression"}),
    (["0", "1", "1"], {"task": "binary"}),
    (["true", "FALSE", "true"], {"task": "binary"}),
    (["no", "yes", "yes"], {"task": "binary"}),
    (["cat", "dog", "3"], {"task": "multiclass", "n_classes": 3}),
    (["0", "4", "2"], {"task": "multiclass", "n_classes": 5}),
    ([str(v) for v in range(100, 130)], {"task": "regression"}),  # many whole numbers
])
def test_the_task_is_inferred_from_the_target(tmp_path: Path, targets: list[str],
                                              want: dict[str, Any]) -> None:
    path = tmp_path / "t.csv"
    path.write_text("a,y\n" + "".join(f"{i},{t}\n" for i, t in enumerate(targets)))
    source = csv_source(path)
    source.check()
    spec = default_spec(source, {})
    assert {k: spec[k] for k in want} == want and ("n_classes" in spec) == ("n_classes" in want)
    ys = [y for _, y in source.rows()]
    assert all(isinstance(y, int | float) and not isinstance(y, bool) for y in ys)
    if targets[0] == "no":  # labels become their index in sorted order
        assert ys == [0, 1, 1]
    if targets[0] == "true":
        assert ys == [1, 0, 1]
    assert default_spec(source, {"hidden_size": 4, "name": "x"}) == {**spec, "hidden_size": 4}


def test_a_target_that_mixes_numbers_and_words_names_the_row(tmp_path: Path) -> None:
    path = tmp_path / "mixed.csv"
    path.write_text("a,y\n1,2.5\n2,n/a\n")
    source = csv_source(path)
    with pytest.raises(FeedError, match=r"row 2 \(line 3\), column 'y': 'n/a' is not a finite"):
        source.check()
