"""`rlcomp score` (run here as `python -m rlcomp.rewards.score_cli` and through its `main`)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlcomp.rewards.score_cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "rewards"


def test_scores_every_line_in_order_with_pathological_ones(tmp_path, capsys):
    gsm = [json.loads(line) for line in (FIXTURES / "gsm8k_answers.jsonl").read_text().splitlines()]
    hostile = [r"\boxed{9^{9^{9^{9}}}}", "\x00\x1b[31m", "", r"\boxed{" + "{" * 3000 + "}" * 3001, "9" * 1_000_000]
    rows = []
    for i, row in enumerate(gsm):
        rows.append({"id": i, "answer": row["answer"], "gold": row["answer"]})
        if i < len(hostile):
            rows.append({"id": f"h{i}", "answer": hostile[i], "gold": "#### 5"})
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")  # a trailing blank line is fine
    code = main([str(src), "--verifier", "gsm8k", "--response-key", "answer", "--gold-key", "gold",
                 "--out", str(out), "--timeout", "1", "--workers", "2"])
    assert code == 0
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in scored] == [r["id"] for r in rows]
    assert all(r["score"] == (0.0 if str(r["id"]).startswith("h") else 1.0) for r in scored)
    assert scored[0]["answer"] == rows[0]["answer"] and "score_error" not in scored[0]
    assert f"accuracy {12 / 17:.4f} (12/17)" in capsys.readouterr().out


def test_math_verifier_and_stdout_output(tmp_path, capsys):
    src = tmp_path / "math.jsonl"
    src.write_text((FIXTURES / "math_solutions.jsonl").read_text())
    assert main([str(src), "--verifier", "math", "--response-key", "solution"]) == 0
    captured = capsys.readouterr()
    assert [json.loads(line)["score"] for line in captured.out.splitlines()] == [1.0] * 12
    assert "accuracy 1.0000 (12/12)  timeouts 0  errors 0  crashed 0" in captured.err


@pytest.mark.parametrize("content, args, message", [
    (None, [], "absent.jsonl: cannot read: No such file or directory"),
    ('{"response": "1", "answer": "1"}\n{"response": "2", answer}\n', [], "in.jsonl:2: not valid JSON"),
    ('{"response": "1", "answer": "1"}\n{"reply": "2", "answer": "2"}\n', [], "in.jsonl:2: no key 'response'"),
    ('{"response": "1", "gold": ["1"]}\n', ["--gold-key", "gold"], "in.jsonl:1: key 'gold' holds list"),
    ('[1, 2]\n', [], "in.jsonl:1: expected a JSON object"),
    ('{"response": "1", "answer": "1"}\n', ["--verifier", "mathh"], "--verifier mathh: \"unknown verifier 'mathh'"),
])
def test_input_errors_are_one_clear_line(tmp_path, capsys, content, args, message):
    src = tmp_path / ("absent.jsonl" if content is None else "in.jsonl")
    if content is not None:
        src.write_text(content)
    assert main([str(src), "--verifier", "math", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_module_entry_point_reports_errors_without_traceback(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text("{oops\n")
    done = subprocess.run([sys.executable, "-m", "rlcomp.rewards.score_cli", str(src), "--verifier", "gsm8k"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == f"rlcomp score: {src}:1: not valid JSON (Expecting property name enclosed in double quotes at column 2)"
