"""`rlcomp launch slurm`: fill in the batch script launchers/slurm/rlcomp.sbatch and submit it with sbatch.

The script starts a Ray head on the first node of the allocation and a Ray worker on every other node, runs
`rlcomp run RECIPE` against that cluster and tears Ray down on every node when the run ends, fails or is
cancelled. This module only assembles the sbatch command, writes the filled-in script next to the job's log,
submits it and (with --wait) streams the log until the job leaves the queue, returning the job's exit code.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from rlcomp.config import RecipeError

SCRIPT = Path(__file__).resolve().parents[1] / "launchers" / "slurm" / "rlcomp.sbatch"
SETTINGS_MARK = "# RLCOMP-SETTINGS:"

EXAMPLES = """\
examples:
  rlcomp launch slurm recipes/quickstart.yaml --nodes 2 --gpus-per-node 8 --exclusive --partition gpu --time 4:00:00
  rlcomp launch slurm recipes/quickstart.yaml --nodes 2 --wait -- stages.sft.max_steps=100
  rlcomp launch slurm recipes/my.yaml --nodes 4 --gpus-per-node 8 --container-image nvcr.io#nvidia/pytorch:25.01-py3 \\
      --container-mounts /lustre:/lustre --setup 'pip install -e .'

The job's log (Ray start-up on every node, then the run's output) is LOG_DIR/rlcomp-JOBID.out; the filled-in
script is saved beside it. Overrides after `--` go to `rlcomp run` as dotted key=value pairs.
"""


class LaunchError(RecipeError):
    """A launcher problem (sbatch missing, submission refused...): reported like a recipe error, in one line."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    launch = subparsers.add_parser(
        "launch", help="submit a recipe to a cluster scheduler (Slurm)",
        description="Submit a recipe to run on a multi-node Ray cluster started inside a scheduler's allocation.")
    which = launch.add_subparsers(dest="launcher", required=True, metavar="SCHEDULER")
    p = which.add_parser(
        "slurm", help="run a recipe on a Slurm allocation (Ray head + workers started by the batch script)",
        description="Fill in launchers/slurm/rlcomp.sbatch and submit it with sbatch: a Ray head on the first "
                    "node, a Ray worker on every other node, then `rlcomp run RECIPE` against that cluster. "
                    "Prints the job id; with --wait streams the job's log and exits with the job's exit code.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", help="recipe YAML file (a path visible from the compute nodes)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides for `rlcomp run` (after --)")
    g = p.add_argument_group("allocation (sbatch options)")
    g.add_argument("--nodes", "-N", type=int, default=1, help="number of nodes (default 1)")
    g.add_argument("--gpus-per-node", type=int, help="GPUs per node (sbatch --gpus-per-node)")
    g.add_argument("--cpus-per-node", type=int, help="CPUs per node (sbatch --cpus-per-task; one task per node)")
    g.add_argument("--mem", help="memory per node, e.g. 200G (sbatch --mem; 0 = all of it)")
    g.add_argument("--partition", "-p", help="partition")
    g.add_argument("--time", "-t", help="time limit, e.g. 4:00:00")
    g.add_argument("--account", "-A", help="account to charge")
    g.add_argument("--exclusive", action="store_true", help="whole nodes (sbatch --exclusive)")
    g.add_argument("--job-name", "-J", default="rlcomp", help="job name (default rlcomp)")
    g.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG",
                   help="any other sbatch option, repeatable, e.g. --sbatch-arg=--qos=high")
    c = p.add_argument_group("environment on the nodes")
    c.add_argument("--container-image", help="run every step in this image (pyxis/enroot srun --container-image)")
    c.add_argument("--container-mounts", help="mounts for the container (srun --container-mounts)")
    c.add_argument("--setup", help="shell run first in every step, e.g. 'source ~/venv/bin/activate'")
    c.add_argument("--dashboard", action="store_true", help="also start the Ray dashboard on the head")
    c.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra environment variable for the job, repeatable (e.g. RLCOMP_HEAD_IP=10.0.0.1)")
    o = p.add_argument_group("this command")
    o.add_argument("--output-dir", help="the run's output directory (`rlcomp run --output-dir`; use shared storage)")
    o.add_argument("--log-dir", default="runs/slurm", help="where the job's log and script go (default runs/slurm)")
    o.add_argument("--script", default=str(SCRIPT), help="batch script template (default: %(default)s)")
    o.add_argument("--wait", action="store_true",
                   help="stream the job's log until it ends and exit with its exit code (Ctrl-C cancels the job)")
    o.add_argument("--no-validate", action="store_true", help="do not validate the recipe here before submitting")
    o.add_argument("--dry-run", action="store_true", help="write the script and print the sbatch command only")
    p.set_defaults(func=launch_slurm)
    return p


def render_script(template: str, settings: dict[str, str]) -> str:
    """The template with `export NAME=value` lines for `settings` inserted under its settings mark
    (PATH's value is prepended to the job's PATH)."""
    lines = [f'export PATH={shlex.quote(value)}:"$PATH"' if name == "PATH" else f"export {name}={shlex.quote(value)}"
             for name, value in settings.items()]
    head, mark, tail = template.partition(SETTINGS_MARK)
    if not mark:
        raise LaunchError(f"batch script template has no line starting with {SETTINGS_MARK!r}")
    mark_line, _, body = tail.partition("\n")
    return head + mark + mark_line + "\n" + "".join(line + "\n" for line in lines) + body


def script_settings(args) -> dict[str, str]:
    settings: dict[str, str] = {}
    if args.container_image:
        settings["RLCOMP_CONTAINER_IMAGE"] = args.container_image
        if args.container_mounts:
            settings["RLCOMP_CONTAINER_MOUNTS"] = args.container_mounts
    else:  # the nodes use this Python environment (sbatch passes PATH on; this covers a non-activated venv)
        settings["PATH"] = str(Path(sys.executable).parent)
    if args.setup:
        settings["RLCOMP_SETUP"] = args.setup
    if args.dashboard:
        settings["RLCOMP_RAY_DASHBOARD"] = "1"
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise LaunchError(f"--env {item!r}: expected NAME=VALUE")
        settings[name] = value
    return settings


def sbatch_command(args, script: Path, log_dir: Path) -> list[str]:
    cmd = ["sbatch", "--parsable", f"--job-name={args.job_name}", f"--nodes={args.nodes}",
           "--ntasks-per-node=1", f"--output={log_dir / 'rlcomp-%j.out'}"]
    for flag, value in [("--gpus-per-node", args.gpus_per_node), ("--cpus-per-task", args.cpus_per_node),
                        ("--mem", args.mem), ("--partition", args.partition), ("--time", args.time),
                        ("--account", args.account)]:
        if value is not None:
            cmd.append(f"{flag}={value}")
    if args.exclusive:
        cmd.append("--exclusive")
    cmd += args.sbatch_arg
    cmd += [str(script), args.recipe]
    if args.output_dir:
        cmd += ["--output-dir", args.output_dir]
    return cmd + list(args.overrides)


def launch_slurm(args) -> int:
    if args.nodes < 1:
        raise LaunchError("--nodes must be at least 1")
    bad = [o for o in args.overrides if "=" not in o or o.startswith("-")]
    if bad:
        raise LaunchError(f"overrides must be key=value: {' '.join(bad)}")
    if not args.no_validate:
        from rlcomp.compare import load_any

        load_any(args.recipe, args.overrides)  # RecipeError: reported before anything is queued (or a comparison)
    template = Path(args.script)
    if not template.is_file():
        raise LaunchError(f"batch script template not found: {template} (pass --script)")
    log_dir = Path(args.log_dir).resolve()
    log_dir.mkdir(parents=True, exist_ok=True)  # Slurm does not create the log's directory
    script = log_dir / f"rlcomp-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.sbatch"
    script.write_text(render_script(template.read_text(), script_settings(args)))
    script.chmod(0o755)
    cmd = sbatch_command(args, script, log_dir)
    if args.dry_run:
        print(shlex.join(cmd))
        return 0
    if shutil.which("sbatch") is None:
        raise LaunchError("sbatch not found: run this on a Slurm login node (launchers/slurm/README.md)")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise LaunchError(f"sbatch failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    job_id = proc.stdout.strip().split(";")[0]
    script = script.rename(log_dir / f"rlcomp-{job_id}.sbatch")
    log = log_dir / f"rlcomp-{job_id}.out"
    print(job_id, flush=True)
    print(f"submitted Slurm job {job_id}: log {log}", file=sys.stderr, flush=True)
    if not args.wait:
        return 0
    return wait_for_job(job_id, log)


def in_queue(job_id: str) -> bool:
    """Whether the job is pending, running or completing (squeue forgets it when it is done)."""
    proc = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    return proc.returncode == 0 and bool(proc.stdout.strip())


def job_exit_code(job_id: str, log: Path) -> int:
    """The finished job's exit code: scontrol (recent jobs), else sacct, else the script's last log line."""
    proc = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True)
    fields = dict(re.findall(r"(\w+)=(\S+)", proc.stdout)) if proc.returncode == 0 else {}
    if "ExitCode" not in fields and shutil.which("sacct"):
        proc = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State,ExitCode"],
                              capture_output=True, text=True)
        if proc.returncode == 0 and "|" in proc.stdout:
            state, code = proc.stdout.splitlines()[0].split("|")[:2]
            fields = {"JobState": state.split()[0], "ExitCode": code}
    if "ExitCode" in fields:
        code, _, sig = fields["ExitCode"].partition(":")
        if int(code):
            return int(code)
        if sig and int(sig):
            return 128 + int(sig)
        return 0 if fields.get("JobState") == "COMPLETED" else 1
    text = log.read_text(errors="replace") if log.exists() else ""
    found = re.findall(r"rlcomp-slurm: job \S+ rlcomp run (?:succeeded|failed with exit code (\d+))", text)
    return int(found[-1] or 0) if found else 1


def wait_for_job(job_id: str, log: Path, poll: float = 2.0) -> int:
    """Stream the job's log until the job leaves the queue; return its exit code. Ctrl-C cancels the job."""
    offset = 0

    def stream() -> None:
        nonlocal offset
        if log.exists():
            with log.open("rb") as f:
                f.seek(offset)
                data = f.read()
            offset += len(data)
            sys.stdout.write(data.decode(errors="replace"))
            sys.stdout.flush()

    cancelled = False
    while True:
        try:
            queued = in_queue(job_id)
            stream()
            if not queued:
                break
            time.sleep(poll)
        except KeyboardInterrupt:
            if cancelled:
                raise
            cancelled = True
            print(f"\ncancelling Slurm job {job_id} (Ctrl-C again to stop waiting)", file=sys.stderr, flush=True)
            subprocess.run(["scancel", job_id])
    time.sleep(0.5)
    stream()  # whatever the job wrote last
    code = job_exit_code(job_id, log)
    print(f"Slurm job {job_id} finished with exit code {code}", file=sys.stderr, flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    """`python -m rlcomp.launch slurm ...`: the same as `rlcomp launch slurm ...`."""
    parser = argparse.ArgumentParser(prog="rlcomp")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args, extra = parser.parse_known_args(["launch", *(sys.argv[1:] if argv is None else argv)])
    args.overrides += [x for x in extra if x != "--"]  # `RECIPE --nodes 2 -- a=1`: argparse leaves a=1 over
    try:
        return args.func(args)
    except RecipeError as exc:
        print(f"rlcomp: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
