"""Zero-shot accuracy through lm-eval on an in-memory model: shipped local tasks over a chosen data folder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from proxsparse_ao.errors import ProxSparseError
from proxsparse_ao.zeroshot import DATA_ENV, LOCAL_TASKS, check_tasks, default_data_dir, zero_shot

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "zeroshot"


@pytest.fixture
def small_data(tmp_path):
    """The first lines of each real task file, in a folder of their own."""
    folder = tmp_path / "zeroshot"
    folder.mkdir()
    source = SHARED if SHARED.is_dir() else default_data_dir()
    for path in source.glob("*.jsonl"):
        (folder / path.name).write_text("".join(path.read_text().splitlines(keepends=True)[:6]))
    return folder


def test_local_tasks_ship_with_the_package():
    assert LOCAL_TASKS == ("local_physical_intuition", "local_science_mc", "local_winogrande")


def test_reports_per_task_and_average_accuracy(tiny_llama, byte_tokenizer, small_data):
    calls = []
    result = zero_shot(
        tiny_llama, byte_tokenizer, ["local_winogrande", "local_science_mc"], limit=4, data_dir=small_data,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert set(result.accuracy) == {"local_winogrande", "local_science_mc"}
    assert all(0.0 <= acc <= 1.0 for acc in result.accuracy.values())
    assert result.average == pytest.approx(sum(result.accuracy.values()) / 2)
    assert result.items == {"local_winogrande": 4, "local_science_mc": 4}
    assert calls and calls[-1][0] <= calls[-1][1]


def test_acc_norm_is_reported_where_the_task_has_it_and_average_stays_the_mean_acc(tiny_llama, byte_tokenizer, small_data):
    result = zero_shot(tiny_llama, byte_tokenizer, ["local_winogrande", "local_science_mc"], limit=4, data_dir=small_data)
    assert result.accuracy_norm["local_winogrande"] is None  # lm-eval's winogrande reports acc only
    assert 0.0 <= result.accuracy_norm["local_science_mc"] <= 1.0
    assert result.average == pytest.approx(sum(result.accuracy.values()) / 2)
    assert result.average_norm is None  # not every task has acc_norm
    assert result.to_dict()["accuracy_norm"] == {"local_winogrande": None, "local_science_mc": result.accuracy_norm["local_science_mc"]}


def test_the_acc_norm_average_is_given_when_every_task_has_acc_norm(tiny_llama, byte_tokenizer, small_data):
    result = zero_shot(tiny_llama, byte_tokenizer, ["local_science_mc", "local_physical_intuition"], limit=4,
                       data_dir=small_data)
    assert result.average_norm == pytest.approx(sum(result.accuracy_norm.values()) / 2)
    assert result.average == pytest.approx(sum(result.accuracy.values()) / 2)


# Answers of very different lengths, so that the raw and the length-normalised log-likelihood pick differently.
SCORED_ITEMS = [
    ("Sound is produced by", ["light", "vibrations of a string", "heat", "a magnet held near the ear"], 3),
    ("Plants make food from", ["sunlight and water", "rocks", "the soil alone", "sand"], 2),
    ("Ice melts when it is", ["warmed", "cooled below its freezing point", "kept dark", "left in a freezer"], 1),
    ("The moon orbits", ["the earth", "the sun directly and never the earth", "mars", "nothing at all"], 1),
    ("A magnet attracts", ["iron", "wood and paper", "glass", "plastic toys"], 0),
]


def _choice_loglikelihoods(model, tokenizer, question: str, choices: list[str]) -> list[float]:
    """log p(" " + choice | question) of each choice, summed over its tokens, from one plain forward each."""
    import torch

    scores = []
    for choice in choices:
        context, answer = tokenizer(question).input_ids, tokenizer(" " + choice).input_ids
        with torch.no_grad():
            logits = model(torch.tensor([context + answer])).logits[0].double()
        logprobs = torch.log_softmax(logits[len(context) - 1 : -1], dim=-1)
        scores.append(float(logprobs[torch.arange(len(answer)), torch.tensor(answer)].sum()))
    return scores


def test_acc_and_acc_norm_match_an_independent_scoring_of_the_items(tiny_llama, byte_tokenizer, tmp_path):
    """acc: the choice with the highest log-likelihood; acc_norm: the highest log-likelihood per character of the choice."""
    lines = [json.dumps({"question": q, "choices": choices, "gold": gold}) for q, choices, gold in SCORED_ITEMS]
    folder = _task_folder(tmp_path, "science_mc.jsonl", "\n".join(lines) + "\n")
    hits, hits_norm = 0, 0
    for question, choices, gold in SCORED_ITEMS:
        scores = _choice_loglikelihoods(tiny_llama, byte_tokenizer, question, choices)
        per_char = [score / len(choice) for score, choice in zip(scores, choices)]
        hits += max(range(len(choices)), key=scores.__getitem__) == gold
        hits_norm += max(range(len(choices)), key=per_char.__getitem__) == gold
    expected_acc, expected_norm = hits / len(SCORED_ITEMS), hits_norm / len(SCORED_ITEMS)
    assert expected_acc != expected_norm, "the items no longer tell acc from acc_norm"

    result = zero_shot(tiny_llama, byte_tokenizer, ["local_science_mc"], data_dir=folder)
    assert result.items == {"local_science_mc": len(SCORED_ITEMS)}
    assert result.accuracy["local_science_mc"] == pytest.approx(expected_acc)
    assert result.accuracy_norm["local_science_mc"] == pytest.approx(expected_norm)
    assert result.average_norm == pytest.approx(expected_norm)


def test_data_folder_can_come_from_the_environment(tiny_llama, byte_tokenizer, small_data, monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(small_data))
    assert default_data_dir() == small_data
    result = zero_shot(tiny_llama, byte_tokenizer, ["local_physical_intuition"], limit=2)
    assert result.items == {"local_physical_intuition": 2}


def test_one_task_may_be_given_by_its_name_alone(tiny_llama, byte_tokenizer, small_data):
    result = zero_shot(tiny_llama, byte_tokenizer, "local_physical_intuition", limit=2, data_dir=small_data)
    assert result.items == {"local_physical_intuition": 2}


def test_missing_data_names_the_option_and_variable(tiny_llama, byte_tokenizer, tmp_path):
    with pytest.raises(ProxSparseError, match=f"winogrande_ni.jsonl, which does not exist.*--zeroshot-data.*{DATA_ENV}"):
        zero_shot(tiny_llama, byte_tokenizer, ["local_winogrande"], data_dir=tmp_path)


def test_unknown_task_lists_the_local_ones(tiny_llama, byte_tokenizer, small_data):
    with pytest.raises(ProxSparseError, match="unknown zero-shot task no_such_task: use a local task"):
        zero_shot(tiny_llama, byte_tokenizer, ["no_such_task"], data_dir=small_data)


def test_standard_task_without_the_hub_names_the_local_tasks(tiny_llama, byte_tokenizer, small_data):
    with pytest.raises(ProxSparseError, match="could not load the data of piqa from the Hugging Face hub.*local_winogrande"):
        zero_shot(tiny_llama, byte_tokenizer, ["piqa"], limit=2, data_dir=small_data)


def test_bad_arguments_are_clear_errors(tiny_llama, byte_tokenizer, small_data):
    with pytest.raises(ProxSparseError, match="no zero-shot tasks"):
        zero_shot(tiny_llama, byte_tokenizer, [], data_dir=small_data)
    with pytest.raises(ProxSparseError, match="limit must be at least 1"):
        zero_shot(tiny_llama, byte_tokenizer, ["local_winogrande"], limit=0, data_dir=small_data)


def test_check_tasks_refuses_bad_names_and_missing_data_before_any_model_work(small_data, tmp_path):
    check_tasks(["local_winogrande"], small_data)
    with pytest.raises(ProxSparseError, match="unknown zero-shot task no_such_task: use a local task"):
        check_tasks(["local_winogrande", "no_such_task"], small_data)
    with pytest.raises(ProxSparseError, match="--zeroshot-data"):
        check_tasks(["local_winogrande"], tmp_path)


WINOGRANDE_ROW = '{"sentence": "The cup fell off the table as _ was tilted.", "option1": "cup", "option2": "table", "answer": "2"}'
SCIENCE_ROW = '{"question": "Sound is produced by", "choices": ["light", "vibrations"], "gold": 1}'


def _task_folder(tmp_path: Path, file_name: str, text: str) -> Path:
    folder = tmp_path / "data"
    folder.mkdir(exist_ok=True)
    (folder / file_name).write_text(text)
    return folder


def test_every_local_task_declares_the_fields_its_yaml_reads():
    from proxsparse_ao.zeroshot import _FIELDS, _templates

    assert set(_FIELDS) == set(LOCAL_TASKS)
    for name, text in _templates().items():
        read = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", text)) | set(re.findall(r"^doc_to_target:\s*(\w+)\s*$", text, re.M))
        assert read <= set(_FIELDS[name]), name


def test_the_shipped_task_data_passes_validation():
    check_tasks(list(LOCAL_TASKS), SHARED if SHARED.is_dir() else default_data_dir())


def test_a_line_missing_a_field_is_refused_naming_the_file_line_and_field(tmp_path):
    lacking = '{"sentence": "A _ b", "option1": "x", "option2": "y"}'
    folder = _task_folder(tmp_path, "winogrande_ni.jsonl", WINOGRANDE_ROW + "\n" + lacking + "\n")
    with pytest.raises(ProxSparseError, match=r"winogrande_ni.jsonl line 2 lacks the field 'answer' that task local_wino"):
        check_tasks(["local_winogrande"], folder)


def test_a_line_that_is_not_json_is_refused_with_its_line_number(tmp_path):
    folder = _task_folder(tmp_path, "science_mc.jsonl", SCIENCE_ROW + "\n" + SCIENCE_ROW + "\nthis is not json\n")
    with pytest.raises(ProxSparseError, match=r"science_mc.jsonl line 3 is not JSON \(.*\): task local_science_mc"):
        check_tasks(["local_science_mc"], folder)


def test_a_line_nested_too_deeply_for_the_json_parser_is_refused_with_its_line_number(tmp_path):
    folder = _task_folder(tmp_path, "science_mc.jsonl", SCIENCE_ROW + "\n" + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ProxSparseError, match=r"science_mc.jsonl line 2 is not usable JSON \(nested too deeply\)"):
        check_tasks(["local_science_mc"], folder)


def test_a_line_that_is_json_but_not_an_object_is_refused(tmp_path):
    folder = _task_folder(tmp_path, "science_mc.jsonl", '["a", "b"]\n')
    with pytest.raises(ProxSparseError, match=r"science_mc.jsonl line 1 is not a JSON object.*question, choices, gold"):
        check_tasks(["local_science_mc"], folder)


@pytest.mark.parametrize("text", ["", "\n  \n"], ids=["empty", "blank lines only"])
def test_a_task_file_without_items_is_refused(tmp_path, text):
    folder = _task_folder(tmp_path, "winogrande_ni.jsonl", text)
    with pytest.raises(ProxSparseError, match=r"winogrande_ni.jsonl holds no items: task local_winogrande"):
        check_tasks(["local_winogrande"], folder)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ('{"question": "q", "choices": ["a", "b"], "gold": "1"}', r"line 1: field 'gold' must be an integer.*got \"1\""),
        ('{"question": "q", "choices": ["a", "b"], "gold": true}', r"line 1: field 'gold' must be an integer"),
        ('{"question": "q", "choices": ["a", "b"], "gold": 2}', r"line 1: field 'gold' is 2, not an index into the 2 choices"),
        ('{"question": "q", "choices": [], "gold": 0}', r"line 1: field 'choices' must be a non-empty list of strings"),
        ('{"question": 7, "choices": ["a"], "gold": 0}', r"line 1: field 'question' must be a string"),
    ],
    ids=["gold as text", "gold as boolean", "gold out of range", "no choices", "question not text"],
)
def test_mistyped_or_unusable_values_are_refused(tmp_path, row, message):
    folder = _task_folder(tmp_path, "science_mc.jsonl", row + "\n")
    with pytest.raises(ProxSparseError, match=message):
        check_tasks(["local_science_mc"], folder)


def test_a_winogrande_row_needs_a_blank_and_an_answer_of_one_or_two(tmp_path):
    folder = _task_folder(tmp_path, "winogrande_ni.jsonl", WINOGRANDE_ROW.replace('"answer": "2"', '"answer": "3"') + "\n")
    with pytest.raises(ProxSparseError, match=r"line 1: field 'answer' must be \"1\" or \"2\", got \"3\""):
        check_tasks(["local_winogrande"], folder)
    folder = _task_folder(tmp_path, "winogrande_ni.jsonl", WINOGRANDE_ROW.replace(" _ ", " it ") + "\n")
    with pytest.raises(ProxSparseError, match=r"line 1: field 'sentence' has no '_' blank"):
        check_tasks(["local_winogrande"], folder)


def test_a_task_file_that_is_not_utf8_is_refused(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "winogrande_ni.jsonl").write_bytes(b"\xff\xfe\x00garbage\n")
    with pytest.raises(ProxSparseError, match=r"winogrande_ni.jsonl is not UTF-8 text"):
        check_tasks(["local_winogrande"], folder)


def test_blank_lines_extra_fields_and_a_byte_order_mark_are_accepted(tmp_path):
    row = WINOGRANDE_ROW[:-1] + ', "idx": 3}'
    folder = _task_folder(tmp_path, "winogrande_ni.jsonl", "\ufeff" + row + "\n\n" + WINOGRANDE_ROW + "\n")
    check_tasks(["local_winogrande"], folder)


def test_zero_shot_refuses_malformed_data_before_scoring(tiny_llama, byte_tokenizer, tmp_path):
    folder = _task_folder(tmp_path, "winogrande_ni.jsonl", '{"foo": 1}\n')
    calls = []
    with pytest.raises(ProxSparseError, match=r"line 1 lacks the fields 'sentence', 'option1', 'option2', 'answer'"):
        zero_shot(tiny_llama, byte_tokenizer, ["local_winogrande"], limit=2, data_dir=folder,
                  progress=lambda done, total: calls.append(done))
    assert calls == []


def test_running_outside_a_git_checkout_leaves_stderr_free_of_git_errors(
    tiny_llama, byte_tokenizer, small_data, tmp_path, monkeypatch, capfd
):
    import lm_eval.evaluator

    hook = lm_eval.evaluator.get_git_commit_hash
    outside = tmp_path / "not_a_checkout"
    outside.mkdir()
    monkeypatch.chdir(outside)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    capfd.readouterr()
    zero_shot(tiny_llama, byte_tokenizer, ["local_winogrande"], limit=2, data_dir=small_data)
    assert "not a git repository" not in capfd.readouterr().err
    assert lm_eval.evaluator.get_git_commit_hash is hook


@pytest.mark.parametrize("answer", ["0", "3", "1 "])
def test_a_winogrande_answer_other_than_one_or_two_is_refused(tmp_path, answer):
    folder = _task_folder(tmp_path, "winogrande_ni.jsonl", WINOGRANDE_ROW.replace('"answer": "2"', f'"answer": "{answer}"') + "\n")
    with pytest.raises(ProxSparseError, match=r"line 1: field 'answer' must be \"1\" or \"2\""):
        check_tasks(["local_winogrande"], folder)


@pytest.mark.parametrize("name", ['data [1]', 'say "data"', "back\\slash"])
def test_a_data_folder_named_with_glob_or_yaml_characters_is_read(tiny_llama, byte_tokenizer, small_data, name):
    """The folder lands in a double-quoted YAML string that datasets reads as a glob pattern."""
    folder = small_data.rename(small_data.parent / name)
    result = zero_shot(tiny_llama, byte_tokenizer, ["local_winogrande", "local_science_mc"], limit=2, data_dir=folder)
    assert result.items == {"local_winogrande": 2, "local_science_mc": 2}


def test_a_task_file_given_as_the_data_folder_is_called_a_file(small_data):
    task_file = small_data / "science_mc.jsonl"
    with pytest.raises(ProxSparseError, match=f"^the zero-shot data folder {re.escape(str(task_file))} is a file: point --zeroshot-data"):
        check_tasks(["local_science_mc"], task_file)
