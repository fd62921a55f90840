"""The Slurm launcher: the sbatch command and script it writes (no Slurm needed), and real jobs on a local Slurm
cluster with two slurmd nodes (tests marked `slurm`).

The `slurm` tests start that cluster with .ci/slurm.sh (Debian's Slurm + munge, ~20 s the first time, instant
when it is up) where it can: as root with apt-get, or where Slurm is installed and /etc/slurm/slurm.conf is the
one that script wrote. Elsewhere they skip and say why; under CI=true they fail instead, since CI is where the
launcher must be proven. RLCOMP_SLURM=0 (or `-m "not slurm"`) skips them.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlcomp import launch

ROOT = Path(__file__).resolve().parents[1]
SMOKE = "recipes/slurm_smoke.yaml"
LAUNCH = [sys.executable, "-m", "rlcomp.launch", "slurm", SMOKE, "--nodes", "2"]


# ---- without Slurm --------------------------------------------------------------------------------------------

def test_batch_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(launch.SCRIPT)], check=True)


def test_dry_run_writes_the_script_and_the_sbatch_command(tmp_path, capsys):
    rc = launch.main(["slurm", SMOKE, "--nodes", "3", "--gpus-per-node", "8", "--partition", "gpu", "--time", "1:00:00",
                      "--container-image", "nvcr.io#nvidia/pytorch:25.01-py3", "--container-mounts", "/data:/data",
                      "--setup", "echo 'set up'", "--log-dir", str(tmp_path), "--output-dir", "/shared/out",
                      "--dry-run", "--", "stages.sft.max_steps=5"])
    assert rc == 0
    cmd = capsys.readouterr().out.split()
    assert cmd[:2] == ["sbatch", "--parsable"]
    for flag in ["--nodes=3", "--gpus-per-node=8", "--partition=gpu", "--time=1:00:00", "--ntasks-per-node=1",
                 f"--output={tmp_path}/rlcomp-%j.out"]:
        assert flag in cmd
    script = Path(cmd[cmd.index(SMOKE) - 1])
    assert cmd[cmd.index(SMOKE):] == [SMOKE, "--output-dir", "/shared/out", "stages.sft.max_steps=5"]
    text = script.read_text()
    assert text.startswith("#!/bin/bash\n#SBATCH")  # sbatch reads directives only before the first command
    settings = "".join(line + "\n" for line in text.splitlines() if line.startswith("export RLCOMP_"))
    shown = subprocess.run(["bash", "-c", settings + 'printf "%s\n" "$RLCOMP_CONTAINER_IMAGE" '
                            '"$RLCOMP_CONTAINER_MOUNTS" "$RLCOMP_SETUP"'], capture_output=True, text=True).stdout
    assert shown.splitlines() == ["nvcr.io#nvidia/pytorch:25.01-py3", "/data:/data", "echo 'set up'"]
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_a_bad_override_is_reported_before_submitting(tmp_path, capsys):
    rc = launch.main(["slurm", SMOKE, "--log-dir", str(tmp_path), "--dry-run", "--", "stages.sft.max_stepz=5"])
    assert rc == 2
    assert "stages.1.max_stepz: unknown key" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_exit_code_from_the_log_when_slurm_forgot_the_job(tmp_path, monkeypatch):
    log = tmp_path / "rlcomp-7.out"
    log.write_text("...\nrlcomp-slurm: job 7: rlcomp run failed with exit code 3\n")
    monkeypatch.setattr(launch.shutil, "which", lambda name: None)
    monkeypatch.setattr(launch.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "gone"))
    assert launch.job_exit_code("7", log) == 3


# ---- a real Slurm cluster -------------------------------------------------------------------------------------

def _cluster_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, timeout=30)
    return out.returncode == 0 and len(re.findall(r" (idle|mix|alloc)\b", out.stdout)) >= 2


@pytest.fixture(scope="module")
def slurm():
    if os.environ.get("RLCOMP_SLURM") == "0":
        pytest.skip("RLCOMP_SLURM=0")
    conf = Path("/etc/slurm/slurm.conf")
    ours = not conf.exists() or "written by rlcomp .ci/slurm.sh" in conf.read_text(errors="replace")
    installable = shutil.which("sbatch") is not None or shutil.which("apt-get") is not None
    why = None
    if ours and os.geteuid() == 0 and installable:
        proc = subprocess.run(["bash", str(ROOT / ".ci" / "slurm.sh")], capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            why = f".ci/slurm.sh failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}"
    if why is None and not _cluster_up():
        why = ("no Slurm cluster with two nodes: sbatch is missing and .ci/slurm.sh cannot install one here "
               "(it needs root and apt-get)" if shutil.which("sbatch") is None
               else "Slurm is installed but does not answer with two idle nodes")
    if why:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


def job_processes(job_id: str) -> list[str]:
    """This job's processes on this machine: the tag every Ray process and the driver of the job carries in
    its environment, or the job's Ray temp dir on the command line."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(v.startswith(f"RLCOMP_RAY_JOB={job_id}.".encode()) for v in env) or f"rlcomp-{job_id}-" in cmd:
            found.append(f"{proc.name} {cmd[:120]}")
    return found


def temp_dirs(job_id: str) -> list[Path]:
    return list(Path("/tmp").glob(f"rlcomp-{job_id}-*"))


def wait_until(condition, timeout: float, what: str, poll: float = 1.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def submit(tmp_path: Path, name: str, *overrides: str) -> tuple[str, Path]:
    out = subprocess.run([*LAUNCH, "--log-dir", str(tmp_path), "--output-dir", str(tmp_path / name),
                          "--job-name", name, "--", *overrides],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.split()[0]
    return job_id, tmp_path / f"rlcomp-{job_id}.out"


@pytest.mark.slurm
def test_recipe_runs_on_a_two_node_allocation(slurm, tmp_path):
    started = time.time()
    out = subprocess.run([*LAUNCH, "--wait", "--log-dir", str(tmp_path), "--output-dir", str(tmp_path / "run")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    log = out.stdout
    assert out.returncode == 0, log[-3000:] + out.stderr
    job_id = log.split()[0]
    assert "all 2 nodes joined; resources: 2.0 CPU" in log and "rlcomp run succeeded" in log
    summary = (tmp_path / "run" / "summary.json").read_text()
    assert '"n": 50' in summary and '"stage": "eval"' in summary
    wait_until(lambda: not job_processes(job_id) and not temp_dirs(job_id), 30, "the job's processes to end")
    print(f"2-node Slurm job {job_id}: {time.time() - started:.0f}s from submission to exit code")


@pytest.mark.slurm
def test_a_failing_job_and_a_cancelled_job_side_by_side(slurm, tmp_path):
    """Two jobs on the same two nodes at once (distinct ports and temp dirs): one fails inside the driver after
    Ray is up and exits non-zero saying why; the other is cancelled mid-training and leaves nothing behind."""
    failing_out = (tmp_path / "failing.stdout").open("w+")
    failing = subprocess.Popen([*LAUNCH, "--wait", "--log-dir", str(tmp_path), "--output-dir", str(tmp_path / "f"),
                                "--job-name", "fails", "--", "stages.sft.batch_size=5000"],
                               cwd=ROOT, stdout=failing_out, stderr=subprocess.STDOUT, text=True)
    try:
        job_id, log = submit(tmp_path, "cancelled", "stages.sft.max_steps=100000")
        wait_until(lambda: any("LearnerWorker" in p for p in job_processes(job_id)), 420,
                   f"job {job_id} to start training")
        node_tags = {t for t in _tags(job_id) if not t.endswith(".driver")}
        assert len(node_tags) == 2, node_tags  # Ray processes of both nodes, each tagged with its node
        cancelled_at = time.time()
        subprocess.run(["scancel", job_id], check=True)
        wait_until(lambda: not launch.in_queue(job_id), 120, f"job {job_id} to leave the queue", poll=0.5)
        gone_after = time.time() - cancelled_at
        assert job_processes(job_id) == [], "processes of the cancelled job are left"
        assert temp_dirs(job_id) == []
        assert launch.job_exit_code(job_id, log) != 0
        print(f"cancelled job {job_id}: out of the queue, no process left, {gone_after:.1f}s after scancel")

        failing.wait(timeout=420)
    finally:
        if failing.poll() is None:
            failing.send_signal(signal.SIGINT)  # --wait cancels its job on Ctrl-C
            failing.wait(timeout=60)
    failing_out.seek(0)
    stdout = failing_out.read()
    assert failing.returncode == 1, stdout[-3000:]
    assert "2000 examples are fewer than batch_size 5000" in stdout
    assert "rlcomp run failed with exit code 1" in stdout
    fail_id = stdout.split()[0]
    assert job_processes(fail_id) == [] and temp_dirs(fail_id) == []
    ports = {re.search(r"Ray head on \S+ at (\S+);", text).group(1)
             for text in (stdout, log.read_text())}
    assert len(ports) == 2, ports


def _tags(job_id: str) -> set[str]:
    tags = set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        tags |= {v.decode() for v in env if v.startswith(f"RLCOMP_RAY_JOB={job_id}.".encode())}
    return tags
