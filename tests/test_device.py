"""Precision follows the device: bf16 autocast only where it is native, fp32 elsewhere; the choice is recorded."""
import json
from pathlib import Path

import pytest

from rlcomp import device
from rlcomp.config import validate_recipe


def cpu_has_bf16() -> bool:
    flags = device.cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags or (device.platform.machine() == "aarch64" and "bf16" in flags)


def test_auto_is_bf16_exactly_where_this_cpu_has_native_bf16():
    choice = device.resolve_precision("auto", "cpu")
    assert choice["native_bf16"] == cpu_has_bf16()
    assert choice["used"] == ("bf16" if cpu_has_bf16() else "fp32")
    assert choice["warning"] is None
    assert device.resolve_precision("fp32", "cpu")["used"] == "fp32"


def test_without_native_bf16_auto_is_fp32_and_an_explicit_bf16_runs_with_a_warning(monkeypatch):
    monkeypatch.setattr(device, "native_bf16", lambda d="cpu": False)  # the processor query, as on a Zen 2
    assert device.resolve_precision("auto", "cpu")["used"] == "fp32"
    forced = device.resolve_precision("bf16", "cpu")
    assert forced["used"] == "bf16" and "emulates" in forced["warning"]
    assert device.engine_precision("cpu")["used"] == "fp32"


def test_engines_on_cpu_keep_fp32_weights():
    assert device.engine_precision("cpu")["used"] == "fp32"


def test_machine_info_names_the_processor_and_its_instruction_sets():
    info = device.machine_info(threads=2)
    assert info["processor"] and info["torch"] and info["threads"] == 2
    assert set(info["instruction_sets"]) == set(device.CPU_FLAGS)
    assert info["instruction_sets"]["avx512_bf16"] == ("avx512_bf16" in device.cpu_flags())
    line = device.machine_line(info)
    assert info["processor"] in line and "2 threads" in line


def test_a_run_records_and_prints_each_stages_choice(ray_cluster, tiny_model, tmp_path, capsys):
    stages = [{"name": name, "type": "sft", "data": {"dataset": "addition", "n": 16}, "batch_size": 8,
               "max_steps": 1, "learner": {"mixed_precision": mp}} for name, mp in (("auto_sft", "auto"), ("fp32_sft", "fp32"))]
    stages.append({"name": "eval", "type": "eval", "data": {"dataset": "addition", "split": "test", "n": 4},
                   "max_tokens": 8, "engine": "hf"})
    from rlcomp.pipeline import run_recipe

    run_recipe(validate_recipe({"model": tiny_model, "stages": stages}), tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())["precision"]
    assert summary["auto_sft"]["learner"]["used"] == ("bf16" if cpu_has_bf16() else "fp32")
    assert summary["auto_sft"]["learner"]["requested"] == "auto"
    assert summary["fp32_sft"]["learner"]["used"] == "fp32"
    assert summary["eval"]["hf engine"]["used"] == "fp32"
    out = capsys.readouterr().out
    assert "auto_sft: learner computes in" in out and device.cpu_model() in out


def test_the_warning_for_emulated_bf16_is_printed_once_per_run(tmp_path, capsys):
    from rlcomp.pipeline import Run

    class NoLogger:
        pass

    run = Run(output_dir=Path(tmp_path), seed=0, logger=NoLogger())
    emulated = {"requested": "bf16", "used": "bf16", "native_bf16": False, "device": "a CPU", "reason": "as asked",
                "warning": "mixed_precision bf16 on a CPU: emulated"}
    for stage in ("sft", "rl"):
        run.stage = stage
        run.record_precision("learner", emulated)
    assert capsys.readouterr().out.count("warning:") == 1
    assert json.loads((tmp_path / "summary.json").read_text())["precision"]["rl"]["learner"]["used"] == "bf16"


@pytest.mark.parametrize("value", ["bf16", "fp32", "auto"])
def test_learner_config_accepts_the_three_precisions(value):
    from rlcomp.config import LearnerConfig

    assert LearnerConfig(mixed_precision=value).mixed_precision == value
    assert LearnerConfig().mixed_precision == "auto"
