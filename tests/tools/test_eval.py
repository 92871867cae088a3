"""`proxsparse-tool eval`, run as a user would: tables, JSON, and one-line errors for bad input."""

from __future__ import annotations

import json
import shutil

import pytest
from cli_runner import CliRun, run_cli, run_cli_process

TEXT = "The quick brown fox jumps over the lazy dog. " * 40


def cli(*args: object) -> CliRun:
    return run_cli("eval", *args)


def assert_one_line_error(done: CliRun, message: str) -> None:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert message in errors[0]


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "fox.txt"
    path.write_text(TEXT)
    return path


def test_help_shows_examples():
    done = cli("--help")
    assert done.returncode == 0
    assert "examples:" in done.stdout and "proxsparse-tool eval --max-tokens 0" in done.stdout


def test_reports_perplexity_and_writes_json(tiny_model_dir, text_file, tmp_path, tiny_llama, byte_tokenizer):
    from proxsparse_ao.evaluation import perplexity, tokenize_text

    out = tmp_path / "result.json"
    done = cli(tiny_model_dir, "--text", text_file, "--seqlen", 128, "--batch-size", 2, "--json", out)
    assert done.returncode == 0, done.stderr
    assert "perplexity" in done.stdout and "windows of 128" in done.stdout
    result = json.loads(out.read_text())
    expected = perplexity(tiny_llama, tokenize_text(byte_tokenizer, TEXT), 128)
    assert result["ppl"] == pytest.approx(expected.ppl, rel=1e-5)
    assert result["tokens"] == expected.tokens == 1792
    assert f"{result['ppl']:.4f}" in done.stdout
    assert "perplexity, 128-token windows: window 14/14" in done.stdout  # in a log, the loop's progress as lines


def test_zero_shot_only_on_local_tasks(tiny_model_dir, tmp_path):
    data = tmp_path / "zeroshot"
    data.mkdir()
    (data / "science_mc.jsonl").write_text(
        "".join(json.dumps({"question": f"Q{i}?", "choices": ["a", "b", "c", "d"], "gold": i % 4}) + "\n" for i in range(5))
    )
    out = tmp_path / "zs.json"
    done = cli(tiny_model_dir, "--no-ppl", "--tasks", "local_science_mc", "--limit", 3,
               "--zeroshot-data", data, "--json", out)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["ppl"] is None and result["zero_shot"]["items"] == {"local_science_mc": 3}
    scores = result["zero_shot"]
    assert _row(done.stdout, "local_science_mc acc") == [f"{scores['accuracy']['local_science_mc']:.4f}", "3 items, 0-shot"]
    norm = scores["accuracy_norm"]["local_science_mc"]
    assert scores["average_norm"] == norm and scores["average"] == scores["accuracy"]["local_science_mc"]
    assert _row(done.stdout, "local_science_mc acc_norm") == [f"{norm:.4f}", "length-normalised: log-likelihood per character"]
    assert _row(done.stdout, "zero-shot average acc")[0] == f"{scores['average']:.4f}"
    assert _row(done.stdout, "zero-shot average acc_norm") == [f"{norm:.4f}", "mean acc_norm of 1 task"]
    assert "mean acc of 1 task," in done.stdout and "1 tasks" not in done.stdout
    assert "it/s" not in done.stderr, "library progress bars leaked"


def _row(stdout: str, label: str) -> list[str]:
    """The cells after `label` in the table row that starts with it."""
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("│").split("│")]
        if cells[0] == label:
            return cells[1:]
    raise AssertionError(f"no row {label!r} in:\n{stdout}")


def test_a_task_without_acc_norm_gets_none_and_no_acc_norm_average(tiny_model_dir, tmp_path):
    """WinoGrande-like tasks have acc only: their acc_norm is null, and the acc_norm average is not taken over fewer tasks."""
    data = tmp_path / "zeroshot"
    data.mkdir()
    (data / "science_mc.jsonl").write_text(json.dumps({"question": "Q?", "choices": ["a", "bb"], "gold": 1}) + "\n")
    (data / "winogrande_ni.jsonl").write_text(
        json.dumps({"sentence": "The cup fell as _ tilted.", "option1": "cup", "option2": "table", "answer": "2"}) + "\n"
    )
    out = tmp_path / "zs.json"
    done = cli(tiny_model_dir, "--no-ppl", "--tasks", "local_winogrande", "local_science_mc",
               "--zeroshot-data", data, "--json", out)
    assert done.returncode == 0, done.stderr
    scores = json.loads(out.read_text())["zero_shot"]
    assert scores["accuracy_norm"]["local_winogrande"] is None and scores["average_norm"] is None
    assert scores["average"] == sum(scores["accuracy"].values()) / 2
    assert _row(done.stdout, "local_winogrande acc")[0] == f"{scores['accuracy']['local_winogrande']:.4f}"
    assert "local_winogrande acc_norm" not in done.stdout
    assert _row(done.stdout, "local_science_mc acc_norm")[0] == f"{scores['accuracy_norm']['local_science_mc']:.4f}"
    assert _row(done.stdout, "zero-shot average acc_norm") == ["-", "not every task has acc_norm (none for local_winogrande)"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("missing.txt", "text file not found"),
        ("short.txt", "fewer than one window of 128"),
        ("wikitext103", "unknown text 'wikitext103'"),
        ("wikitext2", "could not load 'wikitext2' from the Hugging Face hub"),
    ],
)
def test_bad_text_is_a_one_line_error(tiny_model_dir, tmp_path, text, message):
    (tmp_path / "short.txt").write_text("too short")
    source = tmp_path / text if text.endswith(".txt") else text
    assert_one_line_error(cli(tiny_model_dir, "--text", source, "--seqlen", 128), message)


def test_a_seqlen_longer_than_the_models_context_is_a_one_line_error(tiny_model_dir, text_file):
    done = cli(tiny_model_dir, "--text", text_file, "--seqlen", 512)
    assert_one_line_error(done, "--seqlen 512 is longer than the model's maximum context of 256 tokens")
    assert "perplexity" not in done.stdout


def test_a_cache_folder_the_default_assets_cannot_be_built_in_is_a_one_line_error(tmp_path, monkeypatch):
    taken = tmp_path / "notes.txt"
    taken.write_text("not a folder")
    monkeypatch.setenv("PROXSPARSE_CACHE", str(taken))
    done = cli("--max-tokens", "256")  # the default text is read first, then the default model loads
    assert done.returncode == 2 and "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot build the default text in the cache folder {taken} (")


def test_unknown_task_is_a_one_line_error(tiny_model_dir, text_file):
    done = cli(tiny_model_dir, "--no-ppl", "--tasks", "no_such_task")
    assert_one_line_error(done, "unknown zero-shot task no_such_task")


def test_model_folder_without_weights_is_a_one_line_error(tiny_model_dir):
    for weights in tiny_model_dir.glob("*.safetensors"):
        weights.unlink()
    assert_one_line_error(cli(tiny_model_dir), "has no weights")


def test_unreachable_hub_model_names_the_offline_alternative():
    done = cli("HuggingFaceTB/SmolLM2-135M")
    assert_one_line_error(done, "embedded default model")


def test_bad_numbers_are_one_line_errors(tmp_path):
    """Checked before the model loads (a model that does not exist: a regression fails fast, not after loading one)."""
    assert_one_line_error(cli(tmp_path / "no-model", "--seqlen", 1), "--seqlen must be at least 2")


def test_a_text_path_that_is_a_directory_is_called_a_directory(tiny_model_dir, tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    assert_one_line_error(cli(tiny_model_dir, "--text", folder), f"{folder} is a directory, not a text file")


def test_a_file_given_as_the_model_is_called_not_a_folder(text_file):
    assert_one_line_error(cli(text_file), f"{text_file} is not a folder")


def test_a_model_folder_missing_a_tensor_is_a_one_line_error(tiny_model_dir, text_file):
    from safetensors.torch import load_file, save_file

    weights = load_file(str(tiny_model_dir / "model.safetensors"))
    del weights["model.norm.weight"]
    save_file(weights, str(tiny_model_dir / "model.safetensors"), metadata={"format": "pt"})
    assert_one_line_error(cli(tiny_model_dir, "--text", text_file), "lacks 1 tensor the config needs: model.norm.weight")


def test_an_unreadable_text_file_or_model_folder_is_a_one_line_error(tiny_model_dir, open_tmp, unprivileged):
    model = shutil.copytree(tiny_model_dir, open_tmp / "model")
    for path in [model, *model.iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    text = open_tmp / "secret.txt"
    text.write_text(TEXT)
    text.chmod(0)
    assert_one_line_error(run_cli_process("eval", model, "--text", text, prefix=unprivileged),
                          f"cannot read text file {text}: Permission denied")
    model.chmod(0)
    assert_one_line_error(run_cli_process("eval", model, prefix=unprivileged), f"cannot read the model folder {model}: Permission denied")
    model.chmod(0o755)


def test_bad_task_data_and_result_paths_are_refused_before_the_model_loads(tmp_path):
    """The model named does not exist, so an error about anything else shows the order of the checks."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "winogrande_ni.jsonl").write_text('{"foo": 1}\n')
    missing_model = str(tmp_path / "no-model")
    assert_one_line_error(
        cli(missing_model, "--no-ppl", "--tasks", "local_winogrande", "--zeroshot-data", str(data)),
        "line 1 lacks the fields",
    )
    assert_one_line_error(cli(missing_model, "--json", str(tmp_path)), "is a folder: name a file")
    assert_one_line_error(cli(missing_model, "--text", str(tmp_path / "none.txt")), "none.txt")


def test_a_binary_text_file_is_refused_before_the_model_loads(tmp_path):
    """A gzip archive named .txt: one line naming the file and the first byte that is not text, no perplexity."""
    import gzip

    archive = tmp_path / "wiki.txt"
    archive.write_bytes(gzip.compress(TEXT.encode(), mtime=0))
    done = cli(tmp_path / "no-model", "--text", archive)
    assert_one_line_error(done, f"{archive} is not a UTF-8 text file (byte 0x8b at offset 1)")
    assert len(done.stderr.strip().splitlines()) == 1 and done.stdout == ""


def test_a_result_file_that_would_overwrite_an_input_is_refused_and_the_input_kept(tmp_path, text_file):
    data = tmp_path / "data"
    data.mkdir()
    (data / "winogrande_ni.jsonl").write_text("kept\n")
    missing_model = str(tmp_path / "no-model")
    assert_one_line_error(cli(missing_model, "--text", text_file, "--json", text_file),
                          f"--json {text_file} would overwrite what --text reads")
    target = data / "winogrande_ni.jsonl"
    assert_one_line_error(cli(missing_model, "--no-ppl", "--tasks", "local_winogrande", "--zeroshot-data", data,
                              "--json", target), "would overwrite what --zeroshot-data reads")
    assert text_file.read_text() == TEXT and target.read_text() == "kept\n"


def test_empty_names_are_called_empty(tmp_path):
    assert_one_line_error(cli(tmp_path / "no-model", "--text", ""), "the text name is empty")
    assert_one_line_error(cli(""), "the model name is empty")


def test_a_negative_token_limit_and_nothing_to_do_are_one_line_errors(tiny_model_dir, text_file):
    refused = cli(tiny_model_dir, "--text", text_file, "--seqlen", 128, "--max-tokens", -1)
    assert_one_line_error(refused, "--max-tokens must be 0 (all) or positive, got -1")
    assert_one_line_error(cli(tiny_model_dir, "--no-ppl"), "nothing to do: --no-ppl without --tasks")


def test_max_tokens_limits_the_evaluated_tokens(tiny_model_dir, text_file, tmp_path):
    out = tmp_path / "result.json"
    done = cli(tiny_model_dir, "--text", text_file, "--seqlen", 128, "--max-tokens", 300, "--json", out)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert (result["tokens"], result["windows"]) == (256, 2)  # the first 300 tokens: two whole windows of 128
