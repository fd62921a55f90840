"""Ray job submission: `ray job submit --working-dir . -- rlcomp run RECIPE` against a `ray start --head` cluster
(the recipe's driver runs on the cluster, with RAY_ADDRESS set by Ray, and joins it)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head of its own (own temp dir, ports, process group), stopped by its process group, never
    `ray stop` (which stops every Ray on the machine). 8 logical CPUs on this 2-core machine, as rlcomp's own
    local cluster has: a stage's rollout workers, learners and reward service take turns on the cores."""
    temp = Path(tempfile.mkdtemp(prefix="rlcomp-rj-", dir="/tmp"))
    dashboard = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    env.pop("RAY_ADDRESS", None)
    log = (temp / "head.log").open("w")
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", f"--temp-dir={temp}", f"--port={free_port()}", "--num-cpus=8",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         f"--ray-client-server-port={free_port()}", "--dashboard-agent-listen-port=0", "--min-worker-port=0",
         "--max-worker-port=0", "--disable-usage-stats", "--log-color=false"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.time() + 120
        while "Ray runtime started" not in (temp / "head.log").read_text():
            assert head.poll() is None and time.time() < deadline, (temp / "head.log").read_text()[-2000:]
            time.sleep(0.5)
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)  # whatever Ray's own shutdown left
        except ProcessLookupError:
            pass
        head.wait()
        shutil.rmtree(temp, ignore_errors=True)


def submit(address: str, env: dict, entrypoint: list[str]) -> subprocess.CompletedProcess:
    # The job runs in the environment of the head, as a user's would: with this venv's scripts on PATH.
    env = {**env, "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}"}
    out = subprocess.run([RAY, "job", "submit", "--address", address, "--working-dir", ".", "--", *entrypoint],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert "joined the Ray cluster at" in out.stdout  # the driver joined this cluster, not a new one of its own
    return out


@pytest.mark.e2e
def test_ray_job_submit_runs_a_recipe(ray_head, tmp_path):
    address, env = ray_head
    submit(address, env, ["rlcomp", "run", "recipes/slurm_smoke.yaml", "--output-dir", str(tmp_path / "run")])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["evals"][0]["n"] == 50


@pytest.mark.e2e
def test_ray_job_short_form_runs_an_executable_recipe(ray_head, tmp_path):
    """`ray job submit --working-dir . -- recipes/o1_pruner.yaml`: the recipe's shebang runs `rlcomp run`
    (Ray keeps the file's mode when it ships the working directory)."""
    address, env = ray_head
    out = submit(address, env, ["recipes/o1_pruner.yaml", "--smoke", "--output-dir", str(tmp_path / "run")])
    assert "rl o1_pruner (o1_pruner)" in out.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["evals"] and all(e["n"] > 0 for e in summary["evals"])
    stage = tmp_path / "run" / "stages" / "o1_pruner"
    assert (stage / "reference_table.jsonl").is_file() and (stage / "model" / "config.json").is_file()
    assert len((stage / "steps.jsonl").read_text().splitlines()) == 2  # the smoke form's max_steps
