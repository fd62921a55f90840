"""Failures end a run with one line on stderr naming the stage and the cause, and a traceback in error.log:
bad data (before anything runs), impossible placement (at once), a user reward that raises, a dead actor (with
the last checkpoint and the command that resumes, which is then run)."""
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
import yaml

MAKE_MODEL = {"name": "make_model", "type": "make_model", "hidden_size": 64, "num_layers": 2, "num_heads": 2,
              "intermediate_size": 128, "max_position_embeddings": 256}


def rl_stage(**extra):
    stage = {"name": "grpo", "type": "rl", "data": {"dataset": "addition", "n": 64},
             "rollout": {"engine": "hf", "n": 4, "max_tokens": 16}, "prompts_per_step": 4, "max_steps": 2,
             "optim": {"lr": 1e-3}, "learner": {"num_workers": 1}}
    return {**stage, **extra}


def write_recipe(tmp_path, *stages, **top):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"seed": 0, **top, "stages": [MAKE_MODEL, *stages]}))
    return path


def rlcomp(*args, env=None, timeout=300, **popen):
    command = [sys.executable, "-m", "rlcomp.cli", *map(str, args)]
    environment = {**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment, **popen)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("rlcomp: error")]


def only_line(stderr: str) -> str:
    """stderr holds exactly one line, the error."""
    assert len(stderr.strip().splitlines()) == 1, stderr
    [line] = error_lines(stderr)
    return line


def test_a_bad_row_in_a_later_stage_stops_the_run_before_anything_starts(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1+1=", "answer": "2"}\n{"question": "2+2=", \n')
    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"question": "1+1=", "answer": "2"}\n\n{"question": "2+2=", "reply": "4"}\n')
    for data, expected in ((bad, f"{bad}:2: not valid JSON"), (missing, f"{missing}:3: missing key 'answer")):
        recipe = write_recipe(tmp_path, {"name": "sft", "type": "sft", "data": {"dataset": "addition", "n": 64}},
                              {"name": "late_eval", "type": "eval", "data": {"dataset": "mine", "path": str(data)}})
        out = tmp_path / f"run_{data.stem}"
        result = rlcomp("run", recipe, "--output-dir", out, timeout=60)
        assert result.returncode == 2, result.stderr
        line = only_line(result.stderr)
        assert "stage late_eval (stages.2.data)" in line and expected in line, line
        assert not out.exists(), "nothing may start before the data is checked"


def test_placement_the_cluster_can_never_satisfy_fails_at_once(tmp_path):
    # A 2-CPU cluster: the rollout worker holds 1 CPU, then 2 learner ranks of 1 CPU each can never fit.
    recipe = write_recipe(tmp_path, rl_stage(learner={"num_workers": 2}), cluster={"num_cpus": 2})
    started = time.time()
    result = rlcomp("run", recipe, "--output-dir", tmp_path / "out", env={"RLCOMP_PLACEMENT_TIMEOUT_S": "600"})
    assert time.time() - started < 120, "it waited for resources that can never come"
    assert result.returncode == 1, result.stderr
    line = only_line(result.stderr)
    assert "stage grpo: learner group (2 x 1 CPU) asks for 2 CPU, which can never be placed" in line, line
    assert "the cluster has 2 CPU in all and this run's rollout workers (1 x 1 CPU) already hold 1 CPU" in line, line
    assert "Traceback" in (tmp_path / "out" / "error.log").read_text()


def test_a_user_reward_that_raises_names_the_stage_and_the_function(tmp_path):
    (tmp_path / "my_rewards.py").write_text("def broken(sample):\n    raise ZeroDivisionError('no length yet')\n")
    stage = rl_stage(reward={"verifier": "auto", "parts": [{"name": f"{tmp_path / 'my_rewards.py'}:broken"}]})
    result = rlcomp("run", write_recipe(tmp_path, stage), "--output-dir", tmp_path / "out")
    assert result.returncode == 1, result.stderr
    line = only_line(result.stderr)
    assert line.startswith("rlcomp: error: stage grpo: reward function"), line
    assert "broken" in line and "raised ZeroDivisionError: no length yet" in line, line


def test_a_stage_that_rejects_its_data_names_itself_and_debug_shows_the_traceback(tmp_path):
    stage = {"name": "tiny_sft", "type": "sft", "data": {"dataset": "addition", "n": 10}, "batch_size": 32}
    result = rlcomp("--debug", "run", write_recipe(tmp_path, stage), "--output-dir", tmp_path / "out")
    assert result.returncode == 1, result.stderr
    [line] = error_lines(result.stderr)
    assert result.stderr.strip().splitlines()[-1] == line
    assert "stage tiny_sft: 10 examples are fewer than batch_size 32" in line, line
    assert "Traceback" in result.stderr  # --debug: the stage's traceback before the one line


def learner_pids(root: int) -> list[int]:
    """The learner actors' processes under `root` (the driver, which started this run's own Ray)."""
    rows = [line.split(None, 2) for line in subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True,
                                                             text=True).stdout.splitlines()[1:]]
    parent = {int(pid): int(ppid) for pid, ppid, *_ in rows}

    def under_root(pid):
        while pid > 1:
            if pid == root:
                return True
            pid = parent.get(pid, 0)
        return False

    return [int(pid) for pid, _, args in rows if "ray::LearnerWorker" in args and under_root(int(pid))]


@pytest.mark.e2e
def test_a_killed_learner_gives_its_name_the_last_checkpoint_and_the_resume_command_that_works(tmp_path):
    stage = rl_stage(max_steps=2, checkpoint_every=1, learner={"num_workers": 2})
    recipe = write_recipe(tmp_path, stage)
    out = tmp_path / "out"
    run = subprocess.Popen([sys.executable, "-m", "rlcomp.cli", "run", str(recipe), "--output-dir", str(out),
                            "stages.grpo.max_steps=8"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    latest = out / "stages" / "grpo" / "checkpoints" / "latest"
    deadline = time.time() + 240
    while not latest.is_file() and time.time() < deadline and run.poll() is None:
        time.sleep(0.5)
    assert latest.is_file(), "no checkpoint was written"
    pids = learner_pids(run.pid)
    assert len(pids) == 2, pids
    os.kill(pids[-1], signal.SIGKILL)
    _, stderr = run.communicate(timeout=240)
    assert run.returncode == 1, stderr
    [line] = error_lines(stderr)
    assert stderr.strip().splitlines()[-1] == line, "the error is the last word (Ray may note the death before it)"
    assert "stage grpo: learner rank" in line and "died" in line, line
    assert "last checkpoint " + str(out / "stages" / "grpo" / "checkpoints" / "step_") in line, line
    command = line.split("resume with: ", 1)[1].split(" (traceback:")[0]
    assert command == shlex.join(["rlcomp", "run", str(recipe), "--resume", str(out), "stages.grpo.max_steps=8"])

    resumed = rlcomp(*shlex.split(command)[1:])  # the same command, through this interpreter
    assert resumed.returncode == 0, resumed.stderr
    steps = [json.loads(x)["step"] for x in (out / "stages" / "grpo" / "steps.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9)), steps
