"""`proxsparse-tool quickstart`: its inputs are refused before any work (the job itself runs in the README's first command)."""

from __future__ import annotations

from proxsparse_ao.tools import cli


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


def test_evaluation_tokens_must_cover_one_window(capsys):
    assert cli.main(["quickstart", "--eval-tokens", "-1"]) == 2
    assert capsys.readouterr().err.strip() == "error: --eval-tokens must be at least 1024, got -1"
