"""`proxsparse-tool compare`: one table for every method on the same tokens; bad input refused up front."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cli_runner import CliRun, run_cli
from proxsparse_ao.errors import ProxSparseError
from proxsparse_ao.targets import pruned_layers
from proxsparse_ao.tools.compare import METHODS, markdown, parse_methods

TEXT = "The quick brown fox jumps over the lazy dog. " * 40


def cli(*args: object) -> CliRun:
    return run_cli("compare", *args, columns=250)


def assert_one_line_error(done: CliRun, message: str) -> None:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], done.stderr


def test_parse_methods():
    assert parse_methods(" Dense, wanda ,proxsparse") == ["dense", "wanda", "proxsparse"]
    for spec, message in (("dense,lasso", "unknown method(s) lasso"), (",", "empty"), ("wanda,wanda", "twice: wanda")):
        with pytest.raises(ProxSparseError, match=re.escape(message)):
            parse_methods(spec)
    assert {"dense", "magnitude", "wanda", "sparsegpt", "sparsegpt-mask", "proxsparse"} == set(METHODS)


def test_bad_input_is_refused_before_any_work(tmp_path):
    """Before the model loads: the model named does not exist, so a check that regressed fails fast."""
    missing = tmp_path / "no-model"
    (tmp_path / "a_file").write_text("x")
    assert_one_line_error(cli(missing, "--methods", "dense,obs"), "unknown method(s) obs")
    assert_one_line_error(
        cli(missing, "--methods", "magnitude,wanda,proxsparse", "--calibration", "none"),
        "wanda, proxsparse need(s) calibration data",
    )
    assert_one_line_error(cli(missing, "--samples", "0"), "--samples must be at least 1")
    assert_one_line_error(cli(missing, "--json", tmp_path / "a_file" / "x.json"), f"{tmp_path / 'a_file'} is not a folder")
    assert_one_line_error(cli(missing, "--json", tmp_path / "r", "--markdown", tmp_path / "r"), "name the same file")
    assert_one_line_error(cli(missing, "--json", tmp_path), "is a folder: name a file")
    assert_one_line_error(cli(missing, "--device", "nowhere"), "--device 'nowhere'")
    assert_one_line_error(cli(missing, "--text", "wikipedia", "news", "wikipedia"), "--text lists wikipedia twice: drop the repeat")
    assert_one_line_error(cli(missing, "--tasks", "local_winogrande", "local_winogrande"),
                          "--tasks lists local_winogrande twice: drop the repeat")
    archive = tmp_path / "corpus.jsonl"
    archive.write_bytes(b"\x1f\x8b\x08\x00 a gzip header")
    assert_one_line_error(cli(missing, "--text", "wikipedia", archive), f"{archive} is not a UTF-8 text file (byte 0x8b at offset 1)")
    assert_one_line_error(cli(missing, "--calibration", archive), f"{archive} is not a UTF-8 text file (byte 0x8b at offset 1)")


def test_windows_longer_than_the_models_context_are_refused_before_any_method_runs(tiny_model_dir):
    done = cli(tiny_model_dir, "--methods", "dense", "--eval-seqlen", "512")
    assert_one_line_error(done, "--eval-seqlen 512 is longer than the model's maximum context of 256 tokens")
    done = cli(tiny_model_dir, "--methods", "dense,wanda", "--eval-seqlen", "64", "--seqlen", "300")
    assert_one_line_error(done, "--seqlen 300 is longer than the model's maximum context of 256 tokens")
    assert "compare on" not in done.stdout


def test_a_text_shorter_than_one_window_is_refused_before_any_method_runs(tiny_model_dir, tmp_path):
    """Not one FAILED row per method after each one's pruning, and an exit status of 1, as if a method had failed."""
    long, short, out = tmp_path / "fox.txt", tmp_path / "short.txt", tmp_path / "compare.json"
    long.write_text(TEXT)
    short.write_text("hi there")
    done = cli(tiny_model_dir, "--methods", "dense,magnitude", "--text", long, short,
               "--eval-tokens", "0", "--eval-seqlen", "64", "--json", out)
    assert_one_line_error(done, f"--text {short} has 8 tokens, fewer than one --eval-seqlen window of 64: "
                                "use a longer text or a smaller --eval-seqlen")
    assert "compare on" not in done.stdout and not out.exists()


def test_compare_tiny_model(tiny_model_dir, tmp_path):
    text = tmp_path / "fox.txt"
    text.write_text(TEXT)
    out, md = tmp_path / "compare.json", tmp_path / "results" / "compare.md"  # a folder made for it, as by eval and verify
    done = cli(
        tiny_model_dir, "--methods", "dense,magnitude,wanda,sparsegpt,sparsegpt-mask,proxsparse",
        "--text", text, "--calibration", text, "--samples", "2", "--seqlen", "32",
        "--eval-tokens", "256", "--eval-seqlen", "64", "--json", out, "--markdown", md,
    )
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [row["method"] for row in rows] == ["dense", "magnitude", "wanda", "sparsegpt", "sparsegpt-mask", "proxsparse"]
    assert all(row["ppl"] > 1 for row in rows)
    assert [row["pattern_ok"] for row in rows] == [False, True, True, True, True, True]
    assert rows[1]["changed_vs_magnitude"] == 0.0 and rows[2]["changed_vs_magnitude"] > 0
    assert all(row["prune_seconds"] >= 0 and row["peak_memory_bytes"] > 0 for row in rows[1:])
    # every method pruned the same layers, and says which: all 7 linear layers of both blocks, lm_head left dense
    parts = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
             "mlp.down_proj")
    names = [f"model.layers.{block}.{part}" for block in (0, 1) for part in parts]
    assert all(row["pruned_layers"] == pruned_layers(names) for row in rows[1:]) and "pruned_layers" not in rows[0]
    table = md.read_text()
    assert "| sparsegpt-mask | yes |" in table and "Command: `proxsparse-tool compare" in table
    assert "compare" in done.stdout and "exactly 2:4" in done.stdout
    for line in ("wanda: pruning: block 2/2", "proxsparse: learning masks: step 2/2, loss ",  # in a log, each loop as lines
                 f"sparsegpt: perplexity on {text}: window 4/4"):
        assert line in done.stdout


def test_a_failing_method_keeps_the_other_rows(tiny_model_dir, tmp_path, monkeypatch):
    from proxsparse_ao.tools import cli, compare

    real = compare._prune

    def flaky(method, *args, **kwargs):
        if method == "wanda":
            raise MemoryError("no scratch space")
        return real(method, *args, **kwargs)

    monkeypatch.setattr(compare, "_prune", flaky)
    text = tmp_path / "fox.txt"
    text.write_text(TEXT)
    out = tmp_path / "rows.json"
    code = cli.main([
        "compare", str(tiny_model_dir), "--methods", "magnitude,wanda", "--text", str(text), "--calibration", str(text),
        "--samples", "2", "--seqlen", "32", "--eval-tokens", "128", "--eval-seqlen", "64", "--json", str(out),
    ])
    assert code == 1
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert rows[0]["pattern_ok"] and rows[0]["ppl"] > 1
    assert rows[1]["error"] == "MemoryError: no scratch space" and rows[1]["pattern_ok"] is False
    assert result["complete"] is False and result["status"] == "finished"
    assert result["unfinished"] == {"wanda": "failed: MemoryError: no scratch space"}



def test_a_failed_methods_multi_line_error_stays_inside_its_markdown_row():
    """torch's errors often span lines, and a text file name may hold a `|`: every row of the --markdown table is
    one line with as many cells as the header (line breaks made spaces, the `|` escaped)."""
    settings = {"model": "m", "dtype": "float32", "device": "cpu", "threads": 1, "calibration": None, "tasks": [], "limit": None,
                "evaluation": {"texts": ["a|b.txt"], "max_tokens": None, "seqlen": 64}, "command": "proxsparse-tool compare"}
    rows = [{"method": "dense", "mask_only": None, "ppl": 20.0, "ppl_by_text": {"a|b.txt": 20.0}, "prune_seconds": None,
             "pattern_ok": False},
            {"method": "wanda", "mask_only": True, "error": "RuntimeError: shapes [4|8]\n  differ", "ppl": None, "ppl_by_text": {},
             "pattern_ok": False, "prune_seconds": None}]
    header, separator, dense, failed = markdown(rows, ["a|b.txt"], [], settings).splitlines()[:4]
    assert len({len(re.findall(r"(?<!\\)\|", line)) for line in (header, separator, dense, failed)}) == 1
    assert "| PPL a\\|b.txt |" in header
    assert failed.startswith("| wanda | yes | failed: RuntimeError: shapes [4\\|8] differ |")

def _compare_argv(model, tmp_path, methods: str) -> list[str]:
    text = tmp_path / "fox.txt"
    text.write_text(TEXT)
    return ["compare", str(model), "--methods", methods, "--text", str(text), "--calibration", str(text),
            "--samples", "2", "--seqlen", "32", "--eval-tokens", "128", "--eval-seqlen", "64", "--json", str(tmp_path / "rows.json")]


@pytest.mark.parametrize("stop, code, status, why", [
    (KeyboardInterrupt, 130, "interrupted", "interrupted (Ctrl-C)"),
    ("Terminated", 143, "terminated", "terminated (SIGTERM)"),
])
def test_an_interrupted_run_leaves_a_json_that_names_what_did_not_finish(stop, code, status, why, tiny_model_dir, tmp_path,
                                                                         monkeypatch, capsys):
    from proxsparse_ao.tools import cli, compare

    stop = getattr(cli, stop) if isinstance(stop, str) else stop
    real = compare._prune

    def stopped(method, *args, **kwargs):
        if method == "wanda":
            raise stop
        return real(method, *args, **kwargs)

    monkeypatch.setattr(compare, "_prune", stopped)
    out = tmp_path / "rows.json"
    out.write_text('{"complete": true, "rows": "an earlier run"}')
    assert cli.main(_compare_argv(tiny_model_dir, tmp_path, "magnitude,wanda,sparsegpt-mask")) == code
    result = json.loads(out.read_text())
    assert result["complete"] is False and result["status"] == status
    assert [row["method"] for row in result["rows"]] == ["magnitude"] and result["rows"][0]["pattern_ok"]
    assert result["unfinished"] == {"wanda": f"{why} during this method", "sparsegpt-mask": f"not run: {why} before it"}
    captured = capsys.readouterr()
    said = " ".join(captured.out.split())  # the console wraps at its width
    assert f"partial results in {out}: 1 of 3 method(s) finished" in said
    assert captured.err.strip() == status
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".rows.json")] == []  # no temporary file left


def test_sigterm_under_python_m_also_leaves_a_json_that_says_so(tiny_model_dir, tmp_path):
    """`python -m proxsparse_ao.tools.cli` (as the tests and docs run it) runs the CLI module as `__main__`; its
    SIGTERM is still the one `Terminated` compare knows. The process signals itself while wanda prunes, so the
    timing is exact."""
    script = (
        "import os, runpy, signal, sys\n"
        "from proxsparse_ao.quiet import quiet_libraries\n"
        "quiet_libraries()\n"
        "from proxsparse_ao.tools import compare\n"
        "real = compare._prune\n"
        "def prune(method, *args, **kwargs):\n"
        "    if method == 'wanda':\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "    return real(method, *args, **kwargs)\n"
        "compare._prune = prune\n"
        "sys.argv = ['proxsparse-tool', *sys.argv[1:]]\n"
        "runpy.run_module('proxsparse_ao.tools.cli', run_name='__main__', alter_sys=True)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script, *_compare_argv(tiny_model_dir, tmp_path, "magnitude,wanda")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 143 and done.stderr.strip() == "terminated", done.stderr
    result = json.loads((tmp_path / "rows.json").read_text())
    assert result["status"] == "terminated" and result["unfinished"] == {"wanda": "terminated (SIGTERM) during this method"}


def test_while_it_runs_the_json_says_which_methods_are_still_to_come(tiny_model_dir, tmp_path, monkeypatch):
    """A run killed outright (SIGKILL, power) cannot write anything more: what it wrote last already says it is partial."""
    from proxsparse_ao.tools import cli, compare

    real, seen = compare._prune, {}
    out = tmp_path / "rows.json"
    out.write_text('{"complete": true, "rows": "an earlier run"}')

    def watched(method, *args, **kwargs):
        seen[method] = json.loads(out.read_text())
        return real(method, *args, **kwargs)

    monkeypatch.setattr(compare, "_prune", watched)
    assert cli.main(_compare_argv(tiny_model_dir, tmp_path, "magnitude,wanda")) == 0
    first, second = seen["magnitude"], seen["wanda"]  # as the file stood while each method ran
    assert first["rows"] == [] and first["status"] == "running" and first["complete"] is False
    assert first["unfinished"] == {"magnitude": compare.NOT_RUN_YET, "wanda": compare.NOT_RUN_YET}
    assert [row["method"] for row in second["rows"]] == ["magnitude"] and second["unfinished"] == {"wanda": compare.NOT_RUN_YET}
    final = json.loads(out.read_text())
    assert final["complete"] is True and final["status"] == "finished" and final["unfinished"] == {}


def test_the_json_is_replaced_in_one_step_so_a_write_cut_short_leaves_the_previous_file(tmp_path, monkeypatch):
    import proxsparse_ao.cache as cache
    from proxsparse_ao.tools.compare import _write_json

    out = tmp_path / "rows.json"
    _write_json(out, {"model": "m"}, [{"method": "magnitude"}], {"wanda": "not run yet"}, "running")
    before = out.read_text()

    def cut_short(fd, mode):
        handle = open(fd, mode)
        real_write = handle.write

        def write(data):
            real_write(data[: len(data) // 2])
            raise KeyboardInterrupt

        handle.write = write
        return handle

    monkeypatch.setattr(cache.os, "fdopen", cut_short)
    with pytest.raises(KeyboardInterrupt):
        _write_json(out, {"model": "m"}, [{"method": "magnitude"}, {"method": "wanda"}], {}, "finished")
    assert out.read_text() == before and json.loads(before)["status"] == "running"
    assert [p.name for p in tmp_path.iterdir()] == ["rows.json"]


def test_a_json_that_cannot_be_written_mid_run_is_one_line_and_exit_2(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """A full disk after the first method: the command says so in one line, without a traceback, and keeps the
    file as last written."""
    from proxsparse_ao.tools import cli, compare

    real, writes = compare.atomic_write_bytes, []

    def disk_full_after_two(path, data):
        writes.append(path)
        if len(writes) > 2:
            raise OSError(28, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(compare, "atomic_write_bytes", disk_full_after_two)
    out = tmp_path / "rows.json"
    assert cli.main(_compare_argv(tiny_model_dir, tmp_path, "magnitude,wanda")) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors == [f"error: --json {out}: cannot write it: No space left on device"], errors
    kept = json.loads(out.read_text())
    assert kept["status"] == "running" and [row["method"] for row in kept["rows"]] == ["magnitude"]


def _fragmented_heap(mib: int, kept: list) -> None:
    """Allocate `mib` MiB in 100 kB heap blocks between blocks put in `kept`, then free them: the
    heap cannot shrink past the kept blocks, so the freed pages stay resident unless handed back."""
    freed = []
    for _ in range(mib * 10):
        freed.append(b"f" * 100_000)
        kept.append(b"k" * 100_000)
    del freed


def test_each_methods_memory_column_is_its_own_peak_not_what_earlier_methods_left(tiny_model_dir, tmp_path, monkeypatch):
    """magnitude leaves 128 MiB resident and 128 MiB freed on a fragmented heap; wanda then needs 96 MiB
    for a moment. wanda's column must be its 96 MiB: neither the 128 MiB still held (the process's
    peak counted it) nor 0 (reusing the freed pages raised no peak unless they were handed back)."""
    from proxsparse_ao.tools import cli, compare

    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("the peak RSS is reset through /proc/self/clear_refs (Linux)")
    real, left_behind = compare._prune, []

    def costly(method, *args, **kwargs):
        details = real(method, *args, **kwargs)
        if method == "magnitude":
            _fragmented_heap(128, left_behind)
        else:
            scratch = [b"w" * 100_000 for _ in range(960)]
            del scratch
        return details

    monkeypatch.setattr(compare, "_prune", costly)
    argv = _compare_argv(tiny_model_dir, tmp_path, "magnitude,wanda") + ["--markdown", str(tmp_path / "table.md")]
    assert cli.main(argv) == 0
    magnitude, wanda = json.loads((tmp_path / "rows.json").read_text())["rows"]
    mib = 2**20
    assert magnitude["prune_memory_bytes"] >= 200 * mib  # both halves were live together at its peak
    assert wanda["memory_before_bytes"] - magnitude["memory_before_bytes"] >= 100 * mib  # what magnitude left
    assert 80 * mib <= wanda["prune_memory_bytes"] <= 120 * mib
    table = (tmp_path / "table.md").read_text()
    assert "| peak memory added (GiB) |" in table and "minus its resident memory when pruning started" in table
    assert f"| {wanda['prune_memory_bytes'] / 2**30:.2f} |" in table.splitlines()[3]


def test_the_calibration_is_described_as_windows_or_as_documents_with_their_real_tokens():
    from proxsparse_ao.tools.compare import _calibration_words

    windows = {"mode": "windows", "samples": 64, "seqlen": 512, "tokens": 32768}
    documents = {"mode": "documents", "samples": 4, "seqlen": 128, "tokens": 186}
    assert _calibration_words(windows) == "64 x 512 tokens"
    assert _calibration_words(documents) == "4 documents of at most 128 tokens (186 tokens)"



@pytest.mark.parametrize("argv, message", [
    (["--methods", "dense,magnitude,proxsparse", "--lr", "nan"], "--lr must be finite, got nan"),
    (["--methods", "magnitude", "--targets", "re:["], "--targets: 're:[' is not a valid regular expression"),
])
def test_a_bad_method_setting_is_refused_before_any_method_runs(argv, message, tmp_path, capsys):
    from proxsparse_ao.tools import cli

    assert cli.main(["compare", str(tmp_path / "no-model"), *argv]) == 2  # the model is not even looked at
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and message in line


def test_the_printed_table_never_cuts_a_method_name_even_at_80_columns():
    from rich.console import Console

    from proxsparse_ao.tools.compare import _table

    row = dict(mask_only=True, ppl_by_text={"wikipedia": 127.94, "news": 176.99}, prune_seconds=277.0,
               prune_memory_bytes=0.2 * 2**30, changed_vs_magnitude=0.2, pattern_ok=True)
    rows = [{**row, "method": "sparsegpt-mask"}, {**row, "method": "sparsegpt", "mask_only": False}]
    console = Console(width=80, record=True, file=open(os.devnull, "w"))
    console.print(_table(rows, ["wikipedia", "news"], [], "test"))
    text = console.export_text()
    assert "sparsegpt-mask" in text and "sparseg…" not in text


def test_the_printed_table_never_cuts_a_number_at_80_columns_with_zero_shot_tasks():
    """Two texts and two tasks at 80 columns (rich's width for a pipe or a log) left every value cut to
    "12…" or "0.…"; each value must be all there, folded over lines if need be."""
    from rich.console import Console

    from proxsparse_ao.tools.compare import _table

    row = dict(mask_only=True, ppl_by_text={"wikipedia": 127.94, "news": 176.99}, prune_seconds=277.0,
               prune_memory_bytes=0.2 * 2**30, changed_vs_magnitude=0.2, pattern_ok=True,
               zero_shot={"local_science_mc": 0.3333, "local_winogrande": 0.6667},
               zero_shot_norm={"local_science_mc": 0.25, "local_winogrande": None},
               zero_shot_average=0.5, zero_shot_norm_average=None)
    rows = [{**row, "method": "sparsegpt-mask"}, {**row, "method": "sparsegpt", "mask_only": False}]
    console = Console(width=80, record=True, file=open(os.devnull, "w"))
    console.print(_table(rows, ["wikipedia", "news"], ["local_science_mc", "local_winogrande"], "test"))
    text = console.export_text()
    assert "…" not in text
    # each row's cells, read column by column down the folded lines, give the whole values back
    body = [line for line in text.splitlines() if line.startswith("│")]
    cells = [[cell.strip() for cell in line.strip("│").split("│")] for line in body]
    first_row = cells[:cells.index(next(c for c in cells[1:] if c[0]))]  # its lines, up to the next method's
    columns = ["".join(line[i] for line in first_row) for i in range(len(cells[0]))]
    assert columns[:6] == ["sparsegpt-mask", "yes", "127.94", "176.99", "0.3333(0.2500)", "0.6667"]


@pytest.mark.parametrize("argv, absent, present", [
    (["--methods", "dense", "--text", "news"], ["--samples", "--lr", "--limit"], ["--eval-tokens"]),
    (["--methods", "dense,wanda"], ["--lr", "--lambda1"], ["--samples", "--calibration-mode"]),
    (["--methods", "proxsparse", "--tasks", "local_winogrande", "--limit", "5", "--lr", "1e-3"], [], ["--samples", "--lr", "--limit"]),
])
def test_the_recorded_command_reruns_without_being_refused(argv, absent, present, tmp_path):
    import shlex

    from proxsparse_ao.tools import cli
    from proxsparse_ao.tools.compare import _check, command_line
    from proxsparse_ao.tools.options import typed_options

    def parsed(words):
        args = cli.build_parser().parse_args(words)
        args.given = typed_options(cli.build_parser, words)
        return args

    args = parsed(["compare", *argv])
    recorded = shlex.split(command_line(args, parse_methods(args.methods)))[1:]
    assert not set(absent) & set(recorded) and set(present) <= set(recorded)
    again = parsed(recorded)
    _check(again, parse_methods(again.methods))  # the checks a rerun makes first: nothing refused


def test_zero_shot_shows_acc_and_acc_norm_where_the_task_has_it(tiny_model_dir, tmp_path):
    data = tmp_path / "zeroshot"
    data.mkdir()
    (data / "science_mc.jsonl").write_text(
        "".join(json.dumps({"question": f"Q{i}?", "choices": ["a", "bb", "ccc"], "gold": i % 3}) + "\n" for i in range(3))
    )
    (data / "winogrande_ni.jsonl").write_text(
        json.dumps({"sentence": "The cup fell as _ tilted.", "option1": "cup", "option2": "table", "answer": "2"}) + "\n"
    )
    text = tmp_path / "fox.txt"
    text.write_text(TEXT)
    out, md = tmp_path / "compare.json", tmp_path / "compare.md"
    done = cli(
        tiny_model_dir, "--methods", "dense", "--text", text, "--eval-tokens", "128", "--eval-seqlen", "64",
        "--tasks", "local_winogrande", "local_science_mc", "--zeroshot-data", data, "--json", out, "--markdown", md,
    )
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(out.read_text())["rows"]
    assert row["zero_shot_norm"]["local_winogrande"] is None and row["zero_shot_norm_average"] is None
    acc, norm = row["zero_shot"]["local_science_mc"], row["zero_shot_norm"]["local_science_mc"]
    assert 0 <= norm <= 1
    header, _, cells = md.read_text().splitlines()[:3]
    columns = dict(zip(header.strip("| ").split(" | "), cells.strip("| ").split(" | ")))
    assert columns["local_science_mc acc (acc_norm)"] == f"{acc:.4f} ({norm:.4f})"
    assert columns["local_winogrande acc (acc_norm)"] == f"{row['zero_shot']['local_winogrande']:.4f}"
    assert columns["zero-shot avg acc (acc_norm)"] == f"{row['zero_shot_average']:.4f}"
    assert "acc_norm (length-normalised) in brackets" in md.read_text()
