"""`rlcomp` command line: run recipes, evaluate models, score generations."""
from __future__ import annotations

import argparse
import shlex
import sys
import traceback
from pathlib import Path

from rlcomp.config import RecipeError, StageError


def _check_resume(args) -> None:
    if args.resume and args.output_dir and Path(args.resume) != Path(args.output_dir):
        raise RecipeError("--resume DIR continues the run in DIR: do not also give a different --output-dir")


def _run(args) -> int:
    """`rlcomp run` and `rlcomp compare`: a recipe, or a comparison (a file with `methods`)."""
    from rlcomp.compare import Comparison, load_any, run_compare
    from rlcomp.pipeline import run_recipe

    recipe = load_any(args.recipe, args.overrides, smoke=args.smoke)
    if getattr(args, "methods", None):
        if not isinstance(recipe, Comparison):
            raise RecipeError(f"--methods picks methods of a comparison; {args.recipe} is a recipe")
        recipe = recipe.only(args.methods.split(","))
    _check_resume(args)
    # The exact command that continues this run, for the message about a dead actor.
    again = ["rlcomp", args.command, args.recipe] + (["--smoke"] if args.smoke else []) + list(args.overrides)
    again += ["--methods", args.methods] if getattr(args, "methods", None) else []
    resume_command = lambda out: shlex.join(again[:3] + ["--resume", str(out)] + again[3:])  # noqa: E731
    run = run_compare if isinstance(recipe, Comparison) else run_recipe
    run(recipe, args.resume or args.output_dir, resume=bool(args.resume), resume_command=resume_command)
    return 0


def _eval(args) -> int:
    from rlcomp.config import validate_recipe
    from rlcomp.pipeline import run_recipe

    data = {"dataset": args.dataset, "split": args.split, "n": args.n}
    if args.path:
        data["path"] = args.path
    stage = {"type": "eval", "name": "eval", "data": data, "max_tokens": args.max_tokens,
             "temperature": args.temperature, "top_p": args.top_p, "n": args.samples, "pass_k": args.pass_k,
             "level_key": args.level_key, "workers": args.workers}
    if args.verifier:
        stage["verifier"] = args.verifier
    recipe = validate_recipe({"model": args.model, "stages": [stage]}, source="rlcomp eval")
    run_recipe(recipe, args.output_dir)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlcomp", description="Chain-compression post-training on Ray.")
    parser.add_argument("--debug", action="store_true", help="print the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a recipe's stages in order",
                         description="Run a recipe (YAML) stage by stage. Overrides: dotted.key=value, "
                                     "e.g. stages.sft.optim.lr=1e-3 (stages by name or index).")
    run.add_argument("recipe", help="recipe YAML file")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides of recipe keys")
    run.add_argument("--output-dir", help="where the run writes (default: the recipe's output_dir or runs/<time>)")
    run.add_argument("--resume", metavar="DIR", help="continue an interrupted run in DIR from its last checkpoint")
    run.add_argument("--smoke", action="store_true",
                     help="run the recipe end to end on the embedded tiny model and synthetic data, in minutes")
    run.set_defaults(func=_run)

    cmp = sub.add_parser("compare", help="run chain-compression methods side by side from one start model",
                         description="Make the start model, run every method of COMPARE.yaml from it (side by side "
                                     "while the cluster has room), evaluate all alike; writes compare.json, "
                                     "compare.md, plots and report.html. Overrides: dotted.key=value, e.g. "
                                     "methods.grpo.rl.max_steps=10 (methods and stages by name).")
    cmp.add_argument("recipe", metavar="COMPARE.yaml", help="comparison file (start, methods, eval)")
    cmp.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides of the file's keys")
    cmp.add_argument("--output-dir", help="where it writes (default: the file's output_dir or runs/<time>)")
    cmp.add_argument("--resume", metavar="DIR", help="continue in DIR: finished methods are kept, the rest run")
    cmp.add_argument("--smoke", action="store_true", help="every method at smoke size, on the embedded tiny model")
    cmp.add_argument("--methods", metavar="A,B", help="run only these methods (and the start row)")
    cmp.set_defaults(func=_run)

    ev = sub.add_parser("eval", help="evaluate a model on a dataset",
                        description="Generate for a dataset (greedy by default) and report accuracy, pass@k and "
                                    "response length, overall and per level.")
    ev.add_argument("model", help="model directory or Hugging Face id")
    ev.add_argument("--dataset", required=True,
                    help="synthetic task (addition, multiplication, direction, mixed_addition), gsm8k, math500, aime, amc, or a HF name")
    ev.add_argument("--path", help="local jsonl/parquet file for the dataset")
    ev.add_argument("--split", default="test")
    ev.add_argument("--n", type=int, default=None, help="number of problems (default: all; synthetic: 1000)")
    ev.add_argument("--max-tokens", type=int, default=256)
    ev.add_argument("--temperature", type=float, default=0.0)
    ev.add_argument("--top-p", type=float, default=1.0)
    ev.add_argument("--samples", type=int, default=1, help="samples per problem (accuracy is their mean: pass@1)")
    ev.add_argument("--pass-k", type=int, nargs="*", default=[], metavar="K",
                    help="also report pass@K from the samples, e.g. --samples 8 --temperature 0.6 --pass-k 8")
    ev.add_argument("--level-key", default="level", help="the problems' column naming their level (default: level)")
    ev.add_argument("--workers", type=int, default=1)
    ev.add_argument("--verifier", help="override the dataset's verifier")
    ev.add_argument("--output-dir")
    ev.set_defaults(func=_eval)

    from rlcomp import launch
    from rlcomp.rewards import score_cli

    score_cli.add_parser(sub)
    launch.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come after options (`run R.yaml --output-dir D a.b=1`): argparse leaves those unparsed.
    args, extra = parser.parse_known_args(argv)
    extra = [x for x in extra if x != "--"]  # `launch slurm RECIPE --nodes 2 -- key=value`
    if extra and (args.command not in ("run", "compare", "launch") or any(x.startswith("-") or "=" not in x for x in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides += extra
    try:
        return args.func(args)
    except RecipeError as exc:
        print(f"rlcomp: error: {exc}", file=sys.stderr)
        return 2
    except StageError as exc:
        if args.debug:
            print(exc.log.read_text(), file=sys.stderr)
        print(f"rlcomp: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rlcomp: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # outside any stage (e.g. the cluster): still one line unless --debug
        if args.debug:
            traceback.print_exc()
        lines = str(exc).strip().splitlines()
        print(f"rlcomp: error: {type(exc).__name__}: {lines[0] if lines else ''} (--debug shows the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
