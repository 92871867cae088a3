"""Zero-shot accuracy through lm-eval on an in-memory model: shipped local tasks over a chosen data folder."""

from __future__ import annotations

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


def test_data_folder_can_come_from_the_environment(tiny_llama, byte_tokenizer, small_data, monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(small_data))
    assert default_data_dir() == small_data
    result = zero_shot(tiny_llama, byte_tokenizer, ["local_physical_intuition"], limit=2)
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
