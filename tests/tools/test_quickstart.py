"""`proxsparse-tool quickstart`: its inputs are refused before any work, and its saved folder holds what prune's does
(run on a tiny model here; the job on the embedded model runs in the README's first command)."""

from __future__ import annotations

import json

import pytest

from proxsparse_ao.errors import ProxSparseError
from proxsparse_ao.tools import cli, quickstart


@pytest.fixture(autouse=True)
def refusals_load_no_model(request, monkeypatch):
    """A refusal comes before any work: a regressed check fails here in seconds instead of running the job."""
    if "tiny_default_model" in request.fixturenames:
        return
    import proxsparse_ao.models

    def no_model(*args, **kwargs):
        raise AssertionError("quickstart loaded the model before refusing its input")

    monkeypatch.setattr(proxsparse_ao.models, "load_model", no_model)


def test_an_output_that_is_not_an_earlier_pruned_model_folder_is_refused_and_kept(tmp_path, capsys):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    (tmp_path / "file").write_text("x")
    assert cli.main(["quickstart", "--output", str(folder)]) == 2
    assert "is not a pruned-model folder (no proxsparse.json)" in capsys.readouterr().err
    assert cli.main(["quickstart", "--output", str(tmp_path / "file")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert (folder / "keep.txt").read_text() == "mine" and (tmp_path / "file").read_text() == "x"


def test_an_empty_output_is_refused_not_ignored(capsys):
    assert cli.main(["quickstart", "--output", ""]) == 2
    assert capsys.readouterr().err.strip() == "error: --output is empty: name a folder, or leave --output out to save nothing"


def test_evaluation_tokens_must_cover_one_window(capsys):
    assert cli.main(["quickstart", "--eval-tokens", "-1"]) == 2
    assert capsys.readouterr().err.strip() == "error: --eval-tokens must be at least 1024, got -1"


QUICK = ["quickstart", "--samples", "3", "--seqlen", "32", "--eval-tokens", str(quickstart.EVAL_WINDOW)]


@pytest.fixture
def tiny_default_model(monkeypatch):
    """The embedded model takes minutes: quickstart loads a tiny Llama instead (and its table is not wrapped)."""
    import proxsparse_ao.models
    from tiny_models import make_byte_tokenizer, make_tiny_llama

    def tiny_model(*args, **kwargs):
        model = make_tiny_llama()
        model.config.max_position_embeddings = quickstart.EVAL_WINDOW  # quickstart's perplexity windows
        return model, make_byte_tokenizer()

    monkeypatch.setattr(proxsparse_ao.models, "load_model", tiny_model)
    monkeypatch.setenv("COLUMNS", "400")


def test_a_pruned_model_that_fails_the_exact_2_4_check_is_reported_and_exits_1(tiny_default_model, monkeypatch, capsys):
    import proxsparse_ao.export

    def not_zero(model, masks):
        raise ProxSparseError("model.layers.0.mlp.up_proj: the weight is not +0.0 everywhere its mask is off")

    monkeypatch.setattr(proxsparse_ao.export, "check_pruned", not_zero)
    assert cli.main(QUICK) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "not +0.0 everywhere" in out


def test_a_prox_operator_that_grows_a_weight_fails_its_stage(tiny_default_model, monkeypatch, capsys):
    monkeypatch.setattr(quickstart, "prox_2to4", lambda weight, lam: weight * 2)
    assert cli.main(QUICK) == 1
    assert "grew a weight or flipped a sign" in capsys.readouterr().out


def test_the_saved_folder_carries_the_learning_log_prune_writes(tmp_path, monkeypatch, tiny_default_model):
    import proxsparse_ao

    runs = []

    def recorded_learn(*args, **kwargs):
        runs.append(learn(*args, **kwargs))
        return runs[-1]

    learn = proxsparse_ao.learn
    monkeypatch.setattr(proxsparse_ao, "learn", recorded_learn)
    out = tmp_path / "pruned"
    assert cli.main([*QUICK, "--output", str(out)]) == 0
    log = json.loads((out / "learning_log.json").read_text())
    (result,) = runs
    assert result.steps_done == 3 and len(log["steps"]) == 3
    assert log == {"method": "proxsparse", "steps": result.history}
    assert [entry["step"] for entry in log["steps"]] == [1, 2, 3]
    assert {"loss", "ce", "frozen", "fraction_24", "changed_vs_magnitude"} <= set(log["steps"][0])
    metadata = json.loads((out / "proxsparse.json").read_text())  # what prune records, too
    assert metadata["data"] == {"calibration": "default", "mode": "windows", "shape": [3, 32], "tokens": 96, "seed": 0}
    assert metadata["statistics"]["steps"] == 3 and {"torch", "transformers"} <= set(metadata["versions"])


def test_in_a_log_each_stage_is_a_line_as_it_starts_and_the_table_comes_last(tiny_default_model, capsys):
    """Piped or in CI, rich's spinners and bars print nothing: without these lines the minutes of work look stuck."""
    assert cli.main(QUICK) == 0
    lines = capsys.readouterr().out.splitlines()
    said = [i for i, line in enumerate(lines) if line.startswith(("loading ", "learning 2:4 masks: step ", "perplexity with"))]
    assert [lines[i].split(":")[0].split(" ")[0] for i in said] == ["loading", "learning", "learning", "learning", "perplexity"]
    assert lines[said[1]].startswith("learning 2:4 masks: step 1/3, loss ")
    assert said[-1] < next(i for i, line in enumerate(lines) if "proxsparse-ao quickstart" in line)


def test_the_dense_perplexity_names_the_tokens_it_was_measured_on(tiny_default_model, capsys):
    """It printed --eval-tokens as typed ("1500 tokens") where whole windows of 1024 measured 1024."""
    assert cli.main([*QUICK[:-1], "1500"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "dense perplexity" in line)
    assert "(1,024 tokens, 1 window of 1024)" in row and "1500" not in row
