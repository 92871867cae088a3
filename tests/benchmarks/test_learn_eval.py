"""`benchmarks/learn_eval.py` at a tiny budget on the embedded model: one setting learned, checked 2:4 and
scored, written as the JSON `summarize.py` reads; bad input is one line and exit 2, before the model loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_a_tiny_run_writes_a_result_summarize_reads(tmp_path):
    out = tmp_path / "tiny_s0.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "learn_eval.py"), "--set", "samples=1", "--set", "seqlen=16",
         "--eval-tokens", "256", "--eval-seqlen", "128", "--magnitude", "--json", str(out)],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["config"]["samples"] == 1 and result["calibration_shape"] == [1, 16]
    methods = {row["method"]: row for row in result["rows"]}
    assert set(methods) == {"magnitude", "proxsparse"}
    assert all(row["ppl"]["wikipedia"] > 1 for row in methods.values())
    # each row's memory is its own pruning's: magnitude's is not ProxSparse's (AdamW state and all) carried over
    assert 0 < methods["magnitude"]["peak_rss_gib"] < methods["proxsparse"]["peak_rss_gib"]
    assert methods["magnitude"]["memory_added_gib"] < methods["proxsparse"]["memory_added_gib"]
    # both pruned the same layers, and say which: the 7 linear layers of each of the 30 blocks, lm_head left dense
    assert methods["magnitude"]["pruned_layers"] == methods["proxsparse"]["pruned_layers"]
    assert methods["proxsparse"]["pruned_layers"]["count"] == 210
    summary = subprocess.run([sys.executable, str(REPO / "benchmarks" / "summarize.py"), str(out)],
                             capture_output=True, text=True, timeout=300)
    assert summary.returncode == 0 and "| tiny | 0 |" in summary.stdout


@pytest.fixture
def no_model(monkeypatch):
    """Loading the model fails the test: input must be checked before it."""
    import proxsparse_ao.models

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(proxsparse_ao.models, "load_model", no_loading)


@pytest.mark.parametrize("argv, message", [
    (["--set", "lr"], "--set 'lr': expected FIELD=VALUE"),
    (["--set", "learning_rate=1e-3"], "unknown field(s) learning_rate"),
    (["--set", "lr=fast"], "ProxSparseConfig.lr"),
    (["--preset", "fastest"], "unknown ProxSparseConfig preset 'fastest'"),
    (["--text", "missing.txt"], "missing.txt"),
    (["--eval-tokens", "many"], "--eval-tokens: expected an integer, got 'many'"),
    (["--eval-tokens", "100"], "--eval-tokens must be 0 (all) or cover one window of 1024, got 100"),
    (["--eval-seqlen", "1"], "--eval-seqlen: must be at least 2, got 1"),
    (["--threads", "0"], "--threads: must be at least 1, got 0"),
    (["--set", "samples=2", "--set", "batch_size=4"], "ProxSparseConfig.batch_size (4) is larger than ProxSparseConfig.samples (2)"),
    (["--text", "wikipedia", "news", "wikipedia"], "--text lists wikipedia twice: drop the repeat"),
])
def test_bad_input_is_one_line_and_exit_2_before_the_model_loads(argv, message, refuses, no_model):
    refuses("learn_eval.py", *argv, message=message)


def test_a_json_path_that_cannot_be_written_is_refused_before_the_learning(tmp_path, refuses, no_model):
    refuses("learn_eval.py", "--json", tmp_path, message=f"--json {tmp_path} is a folder: name a file")
    text = tmp_path / "eval.txt"
    text.write_text("The quick brown fox. " * 50)
    refuses("learn_eval.py", "--text", text, "--json", text, message="would overwrite what --text reads")


def test_a_bad_value_is_one_line_from_a_fresh_interpreter_too(refused_from_a_fresh_interpreter):
    """No library chatter (torchao's load failures, torch's pytree notes) before the error line."""
    refused_from_a_fresh_interpreter("learn_eval.py", "--preset", "fastest", starts="error: unknown ProxSparseConfig preset 'fastest'")


def test_a_run_of_more_than_64_steps_reports_its_progress_and_finishes(tmp_path, run_benchmark, monkeypatch):
    """Past 64 steps the mask statistics come every few steps only: the progress lines show `-` for a step
    without them (step 1 here) instead of the run failing on it."""
    import proxsparse_ao.models
    from tiny_models import make_byte_tokenizer, make_tiny_llama

    monkeypatch.setattr(proxsparse_ao.models, "load_model", lambda *args, **kwargs: (make_tiny_llama(), make_byte_tokenizer()))
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(f"Paragraph {i}: the quick brown fox jumps over the lazy dog." for i in range(200)))
    out = tmp_path / "long_s0.json"
    code, printed, err = run_benchmark("learn_eval.py", "--set", "samples=66", "--set", "seqlen=16", "--set", f"calibration={text}",
                                       "--text", text, "--eval-tokens", "256", "--eval-seqlen", "128", "--json", out)
    assert code == 0, printed + err
    assert "  step 1/66 loss " in printed and " 2:4 - moved - (" in printed
    assert "  step 66/66 loss " in printed
    (row,) = json.loads(out.read_text())["rows"]
    assert "error" not in row and row["stopped"] is None


def test_a_seqlen_longer_than_the_models_context_is_bad_input_not_a_failed_run(tmp_path, refuses, monkeypatch):
    import proxsparse_ao.models
    from tiny_models import make_byte_tokenizer, make_tiny_llama

    monkeypatch.setattr(proxsparse_ao.models, "load_model", lambda *args, **kwargs: (make_tiny_llama(), make_byte_tokenizer()))
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 100)
    refuses("learn_eval.py", "--set", "seqlen=512", "--set", "samples=1", "--set", f"calibration={text}", "--text", text,
            "--eval-tokens", "256", "--eval-seqlen", "128", "--json", tmp_path / "out.json",
            message="ProxSparseConfig.seqlen 512 is longer than the model's maximum context of 256 tokens")
    assert not (tmp_path / "out.json").exists()


def test_a_text_shorter_than_one_window_is_bad_input_before_the_learning(tmp_path, refuses, monkeypatch):
    """Not a ProxSparse row that failed at its perplexity after the whole learning run."""
    import proxsparse_ao.api
    import proxsparse_ao.models
    from tiny_models import make_byte_tokenizer, make_tiny_llama

    def no_learning(*args, **kwargs):
        raise AssertionError("the learning started before the texts were checked")

    monkeypatch.setattr(proxsparse_ao.models, "load_model", lambda *args, **kwargs: (make_tiny_llama(), make_byte_tokenizer()))
    monkeypatch.setattr(proxsparse_ao.api, "learn", no_learning)
    text, short = tmp_path / "text.txt", tmp_path / "short.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 100)
    short.write_text("hi there")
    refuses("learn_eval.py", "--set", "seqlen=16", "--set", "samples=1", "--set", f"calibration={text}", "--text", text, short,
            "--eval-tokens", "0", "--eval-seqlen", "128", "--json", tmp_path / "out.json",
            message=f"--text {short} has 8 tokens, fewer than one --eval-seqlen window of 128: use a longer text or a smaller --eval-seqlen")
    assert not (tmp_path / "out.json").exists()


def test_a_json_that_cannot_be_written_at_the_end_is_one_line_after_the_printed_rows(tmp_path, run_benchmark, monkeypatch):
    """The --json folder was fine when checked, then a file took its place during the run: the rows are on
    stdout, the failure is one line and exit 2, not a traceback."""
    import proxsparse_ao.models
    from tiny_models import make_byte_tokenizer, make_tiny_llama

    text, results = tmp_path / "text.txt", tmp_path / "results"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 100)
    results.mkdir()

    def load_then_block_the_folder(*args, **kwargs):
        results.rmdir()
        results.write_text("a file where the results folder was")
        return make_tiny_llama(), make_byte_tokenizer()

    monkeypatch.setattr(proxsparse_ao.models, "load_model", load_then_block_the_folder)
    code, printed, err = run_benchmark("learn_eval.py", "--set", "seqlen=16", "--set", "samples=1", "--set", f"calibration={text}",
                                       "--text", text, "--eval-tokens", "256", "--eval-seqlen", "128",
                                       "--json", results / "out.json")
    assert code == 2 and '"method": "proxsparse"' in printed
    (line,) = err.strip().splitlines()
    assert line.startswith(f"error: --json {results / 'out.json'}: cannot write it: ") and line.endswith("(the rows are printed above)")
