"""The api sample: the real `choreo run` against the sample's own HTTP server.

Each test starts sample_pipelines/api/server.py on a free port (so tests can run in
parallel) and runs the pipeline with `--workers 8` on part of records.jsonl: within the
file's limit the server answers no 429 at all; with the limit raised past the server's
rate it answers many, and the step's retries (after each Retry-After) absorb them.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import importlib.util
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.cli.conftest import CHOREO, ROOT, choreo_env, read_results

API = ROOT / "sample_pipelines" / "api"
KNOWN = 24  # known customer ids per run, besides every unknown one in records.jsonl


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"choreo_sample_api_{name}", API / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while they are made
    spec.loader.exec_module(module)
    return module


server = _load("server")
steps = _load("steps")


@dataclass
class Server:
    url: str
    process: subprocess.Popen[str]

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/stats", timeout=10) as response:
            stats: dict[str, Any] = json.load(response)
        return stats

    def stop(self) -> str:
        """Stop the server (SIGTERM); return the line it printed about what it saw."""
        self.process.terminate()
        out, _ = self.process.communicate(timeout=10)
        return out.strip().splitlines()[-1]


StartServer = Callable[..., Server]


@pytest.fixture
def start_server() -> Iterator[StartServer]:
    started: list[subprocess.Popen[str]] = []

    def start(*options: str) -> Server:
        process = subprocess.Popen(
            [sys.executable, str(API / "server.py"), "--port", "0", *options],
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("serving http://127.0.0.1:"), first
        return Server(first.split()[1], process)

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def _records() -> list[str]:
    return [
        json.loads(line)["customer_id"]
        for line in (API / "records.jsonl").read_text(encoding="utf-8").splitlines()
    ]


def _subset(tmp_path: Path) -> list[str]:
    """Every unknown id of records.jsonl and the first KNOWN known ones, in file order,
    written to tmp_path/records.jsonl."""
    ids: list[str] = []
    known = 0
    for customer_id in _records():
        if server.customer(customer_id) is None:
            ids.append(customer_id)
        elif known < KNOWN:
            ids.append(customer_id)
            known += 1
    text = "".join(json.dumps({"customer_id": i}) + "\n" for i in ids)
    (tmp_path / "records.jsonl").write_text(text, encoding="utf-8")
    return ids


def _run(tmp_path: Path, url: str, *options: str) -> tuple[int, list[dict[str, Any]], str]:
    completed = subprocess.run(
        [
            str(CHOREO),
            "run",
            str(API / "pipeline.yaml"),
            "-i",
            "records.jsonl",
            "-o",
            "results.jsonl",
            "--workers",
            "8",
            "--include-data",
            *options,
        ],
        cwd=tmp_path,
        env=choreo_env({"API_URL": url, "API_TOKEN": "", "NO_COLOR": "1"}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in completed.stderr, completed.stderr
    return completed.returncode, read_results(tmp_path / "results.jsonl"), completed.stderr


def _check_results(ids: list[str], results: list[dict[str, Any]]) -> None:
    """Every known id enriched with what the server knows of it; every unknown one failed
    with the API's 404."""
    assert [r["line"] for r in results] == list(range(1, len(ids) + 1))
    for customer_id, result in zip(ids, results, strict=True):
        expected = server.customer(customer_id)
        if expected is None:
            assert result["status"] == "failed", result
            assert result["error"] == {
                "step": "fetch customer",
                "phase": "job",
                "type": "CustomerNotFound",
                "message": f"no customer {customer_id!r}"
                f" (GET /customers/{customer_id} answered 404 Not Found)",
            }
        else:
            assert result["status"] == "succeeded", result
            assert result["data"]["job"] == {"fetch customer": expected}


def test_within_the_files_limit_the_api_answers_no_429(
    tmp_path: Path, start_server: StartServer
) -> None:
    api = start_server()  # 25 requests a second, as the pipeline file expects
    ids = _subset(tmp_path)
    code, results, stderr = _run(tmp_path, api.url)
    assert code == 1, stderr  # the unknown ids failed
    _check_results(ids, results)
    assert {r["attempts"]["fetch customer"] for r in results} == {1}
    assert api.stats()["rate_limited"] == 0
    assert api.stop() == (
        f"api server: {len(ids)} requests, 0 answered 429 (rate limited), 8 answered 404"
    )
    assert "limit api:" in stderr  # the summary counts the waits


def test_past_the_apis_rate_429s_come_and_the_retries_absorb_them(
    tmp_path: Path, start_server: StartServer
) -> None:
    api = start_server("--rate", "50", "--burst", "5", "--latency", "0", "--retry-after", "1")
    ids = _subset(tmp_path)
    code, results, stderr = _run(tmp_path, api.url, "--limit", "api=1000/s")
    assert code == 1, stderr
    _check_results(ids, results)
    stats = api.stats()
    retried = [r for r in results if r["attempts"]["fetch customer"] > 1]
    assert stats["rate_limited"] > 0, stats
    assert stats["rate_limited"] == sum(r["attempts"]["fetch customer"] - 1 for r in retried)
    assert stats["requests"] == len(ids) + stats["rate_limited"]
    assert "answered 429 Too Many Requests; waited 1 s (Retry-After: 1)" in stderr


def test_the_sample_validates_without_warnings(tmp_path: Path) -> None:
    completed = subprocess.run(
        [str(CHOREO), "validate", str(API / "pipeline.yaml")],
        cwd=tmp_path,
        env=choreo_env({"NO_COLOR": "1"}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "warning" not in completed.stdout + completed.stderr


# -- steps.py on its own ------------------------------------------------------------------


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert steps.retry_after("2") == 2.0
    assert steps.retry_after(" 7 ") == 7.0
    assert steps.retry_after(None) == steps.retry_after("later") == 0.0
    in_30_s = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < steps.retry_after(in_30_s) <= 30
    assert steps.retry_after(email.utils.formatdate(time.time() - 60, usegmt=True)) == 0.0


def test_the_client_is_refused_on_another_event_loop_and_closed_with_its_own() -> None:
    import httpx

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"id": request.url.path.rpartition("/")[2]})

    client = httpx.AsyncClient(base_url="http://api.test", transport=httpx.MockTransport(answer))
    resource = steps.serve(client)
    api = next(resource)
    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(api.get("/customers/C-1")).json() == {"id": "C-1"}
        with pytest.raises(RuntimeError, match="another event loop"):
            asyncio.run(api.get("/customers/C-2"))
        assert not client.is_closed
        # What choreo does to a worker's loop before tearing its resources down.
        from choreo_cli.core.event_loop import close_loop

        close_loop(loop)
        assert client.is_closed
    finally:
        loop.close()
    with contextlib.suppress(StopIteration):
        next(resource)
