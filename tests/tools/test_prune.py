"""`proxsparse-tool prune` on a tiny local model folder with a byte-level tokenizer (offline, seconds)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from proxsparse_ao import is_nm, load_pruned
from proxsparse_ao.tools import cli

TEXT = "\n\n".join(
    f"Paragraph {i}: the quick brown fox jumps over the lazy dog while the model learns which weights to keep."
    for i in range(20)
)


@pytest.fixture
def model_dir(tmp_path, tiny_llama):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())  # 256 symbols -> ids 0..255 = the tiny vocab
    backend = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    folder = tmp_path / "tiny"
    tiny_llama.save_pretrained(folder)
    PreTrainedTokenizerFast(tokenizer_object=backend).save_pretrained(folder)
    (tmp_path / "calib.txt").write_text(TEXT)
    return folder


def _prune(model_dir, out, *extra):
    calib = model_dir.parent / "calib.txt"
    return cli.main(["prune", str(model_dir), "--output", str(out), "--calibration", str(calib),
                     "--samples", "4", "--seqlen", "16", "--lr", "0.01", *extra])


def test_prune_writes_an_exactly_2_4_model(model_dir, tmp_path, tiny_llama, capsys):
    out = tmp_path / "out"
    assert _prune(model_dir, out, "--log", str(tmp_path / "log.json")) == 0
    model, tokenizer, masks, metadata = load_pruned(out)
    assert tokenizer is not None and len(masks) == 14
    assert metadata["method"] == "proxsparse" and metadata["config"]["samples"] == 4
    assert metadata["statistics"]["steps"] == 4 and metadata["data"]["shape"] == [4, 16]
    for name, mask in masks.items():
        weight = model.get_submodule(name).weight.detach()
        assert is_nm(weight)
        assert torch.equal(weight[mask], tiny_llama.get_submodule(name).weight.detach()[mask])
    assert torch.equal(model.lm_head.weight, tiny_llama.lm_head.weight)
    steps = json.loads((out / "learning_log.json").read_text())["steps"]
    assert len(steps) == 4 and {"loss", "ce", "frozen", "fraction_24", "changed_vs_magnitude"} <= set(steps[0])
    assert len(json.loads((tmp_path / "log.json").read_text())["steps"]) == 4
    out = capsys.readouterr().out
    assert "exactly 2:4" in out
    assert "learning masks: step 4/4, loss " in out  # in a log (not a terminal), the bar's progress as lines


def _prune_baseline(model_dir, out, method, *extra):
    calibration = [] if method == "magnitude" else [
        "--calibration", str(model_dir.parent / "calib.txt"), "--samples", "4", "--seqlen", "16"]
    return cli.main(["prune", str(model_dir), "--output", str(out), "--method", method, *calibration, *extra])


def test_magnitude_method(model_dir, tmp_path):
    out = tmp_path / "mag"
    assert _prune_baseline(model_dir, out, "magnitude") == 0
    model, _, masks, metadata = load_pruned(out)
    assert metadata["method"] == "magnitude" and all(is_nm(model.get_submodule(n).weight) for n in masks)
    assert metadata["data"] is None and json.loads((out / "learning_log.json").read_text())["steps"] == []


@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "sparsegpt-mask"])
def test_a_calibrated_baseline_is_saved_with_the_masks_the_library_gives(model_dir, tmp_path, method, capsys):
    from proxsparse_ao.baselines import config_for, prune
    from proxsparse_ao.models import load_model

    out = tmp_path / method
    assert _prune_baseline(model_dir, out, method, "--seed", "3") == 0
    assert "pruning decoder blocks: block 2/2" in capsys.readouterr().out  # the tiny Llama's two blocks, in a log
    model, _, masks, metadata = load_pruned(out)
    config = config_for(method, samples=4, seqlen=16, seed=3, calibration=str(model_dir.parent / "calib.txt"))
    expected, tokenizer = load_model(model_dir)
    original = {name: expected.get_submodule(name).weight.detach().clone() for name in masks}
    library = prune(expected, config, tokenizer=tokenizer)
    assert set(masks) == set(library.masks) and all(torch.equal(masks[n], library.masks[n]) for n in masks)
    assert all(torch.equal(model.get_submodule(n).weight, expected.get_submodule(n).weight) for n in masks)
    kept_original = [torch.equal(model.get_submodule(n).weight[masks[n]], original[n][masks[n]]) for n in masks]
    assert all(kept_original) == (method != "sparsegpt")  # only SparseGPT proper updates the kept weights
    assert metadata["method"] == method and metadata["config"] == config.to_dict()
    assert metadata["data"]["shape"] == [4, 16] and metadata["data"]["seed"] == 3


@pytest.mark.parametrize("method", ["proxsparse", "wanda"])
def test_documents_mode_records_the_real_calibration_tokens(model_dir, tmp_path, method):
    """Documents shorter than --seqlen are padded: proxsparse.json says how many tokens there really were."""
    short = tmp_path / "short.jsonl"
    short.write_text("".join(json.dumps({"text": "word " * (i + 1)}) + "\n" for i in range(6)))
    out = tmp_path / "out"
    assert cli.main(["prune", str(model_dir), "--method", method, "--output", str(out), "--calibration", str(short),
                     "--calibration-mode", "documents", "--samples", "4", "--seqlen", "64"]) == 0
    data = load_pruned(out)[3]["data"]
    assert data["shape"] == [4, 64] and data["mode"] == "documents"
    assert 8 <= data["tokens"] <= 4 * 30  # four documents of 1 to 6 words, 5 bytes each at most


@pytest.mark.parametrize(
    "method, extra, message",
    [
        ("magnitude", ["--samples", "4"], "--samples: not read by --method magnitude (it reads --targets, --ignore, --strict)"),
        ("wanda", ["--lr", "0.01", "--lambda1", "2"], "--lambda1, --lr: not read by --method wanda (it reads --samples, "
                                                      "--seqlen, --seed, --calibration, --calibration-mode, --targets"),
        ("sparsegpt", ["--preset", "paper"], "--preset: not read by --method sparsegpt"),
        ("wanda", ["--samples", "0"], "--samples must be >= 1, got 0"),
    ],
)
def test_a_flag_the_baseline_does_not_read_is_refused_not_ignored(model_dir, tmp_path, capsys, method, extra, message):
    assert _prune_baseline(model_dir, tmp_path / "out", method, *extra) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--lambda1", "-1"], "lambda1 must be >= 0"),
        (["--targets", "re:.*nothing"], "no prunable linear layer"),
        (["--samples", "0"], "error: --samples must be > 0, got 0"),
        (["--batch-size", "8"], "error: --batch-size (8) is larger than --samples (4): "),
        (["--eval-seqlen", "1", "--eval"], "--eval-seqlen must be at least 2, got 1"),
        (["--threads", "-1"], "--threads must be at least 1, got -1"),
        (["--device", "cuda:99"], "--device cuda:99: "),
        (["--device", "nowhere"], "--device 'nowhere': Expected one of cpu"),
        (["--seqlen", "512"], "--seqlen 512 is longer than the model's maximum context of 256 tokens"),
        (["--eval", "--eval-seqlen", "512"], "--eval-seqlen 512 is longer than the model's maximum context of 256 tokens"),
    ],
)
def test_bad_input_exits_2_with_a_message(model_dir, tmp_path, capsys, extra, message):
    assert _prune(model_dir, tmp_path / "bad", *extra) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_empty_calibration_text_is_refused(model_dir, tmp_path, capsys):
    (model_dir.parent / "calib.txt").write_text("   \n")
    assert _prune(model_dir, tmp_path / "out") == 2
    assert "empty" in capsys.readouterr().err


def test_a_binary_calibration_file_is_refused_before_the_model_loads(model_dir, tmp_path, capsys, monkeypatch):
    import proxsparse_ao.models

    def not_loaded(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(proxsparse_ao.models, "load_model", not_loaded)
    calib = model_dir.parent / "calib.txt"
    calib.write_bytes(b"\x00\x01binary")
    assert _prune(model_dir, tmp_path / "out") == 2
    assert capsys.readouterr().err.strip() == f"error: {calib} is not a UTF-8 text file (byte 0x00 at offset 0)"
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_overwrite(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    assert _prune(model_dir, out) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_preset_sets_the_fields_and_flags_override_it(model_dir, tmp_path):
    out = tmp_path / "paper"
    assert _prune(model_dir, out, "--preset", "paper", "--seqlen", "16", "--samples", "2",
                  "--calibration-mode", "windows", "--no-activation-aware") == 0
    _, _, masks, metadata = load_pruned(out)
    config = metadata["config"]
    assert (config["strength"], config["lambda1"], config["train"], config["activation_aware"]) == ("absolute", 0.25, "all", False)
    assert (config["samples"], config["lr"]) == (2, 0.01)  # given on the command line
    assert metadata["statistics"]["changed_vs_start"] == metadata["statistics"]["changed_vs_magnitude"]  # magnitude space


def test_outputs_that_would_destroy_something_or_fail_at_the_end_are_refused_before_any_work(model_dir, tmp_path, capsys, monkeypatch):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "keep.txt").write_text("mine")
    (tmp_path / "a_file").write_text("x")
    cases = [
        ([str(model_dir), "--output", str(model_dir), "--overwrite"], "is the model being pruned"),
        ([str(model_dir), "--output", str(notes), "--overwrite"], "is not a pruned-model folder (no proxsparse.json)"),
        ([str(model_dir), "--output", ".", "--overwrite"], "is the current folder or holds it"),
        ([str(model_dir), "--output", str(tmp_path / "o"), "--method", "proxsparse", "--log", str(notes)], "--log " + str(notes) + " is a folder"),
        ([str(model_dir), "--output", str(tmp_path / "o"), "--method", "proxsparse", "--checkpoint-dir", str(tmp_path / "a_file")],
         "is not a folder"),
        ([str(model_dir), "--output", str(tmp_path / "o"), "--method", "proxsparse", "--log", str(tmp_path / "o" / "proxsparse.json")],
         "--log " + str(tmp_path / "o" / "proxsparse.json") + " is inside the --output folder, which the save replaces,"),
        ([str(model_dir), "--output", str(tmp_path / "o"), "--method", "proxsparse", "--plot", str(tmp_path / "o")],
         "is inside the --output folder"),
        ([str(model_dir), "--output", str(tmp_path / "o"), "--method", "proxsparse", "--checkpoint-dir", str(tmp_path / "o" / "ck")],
         "--checkpoint-dir " + str(tmp_path / "o" / "ck") + " is inside the --output folder"),
        ([str(model_dir), "--output", str(tmp_path / "o"), "--method", "proxsparse", "--checkpoint-dir", str(model_dir / "ck")],
         "is inside the model folder being pruned,"),
    ]
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    for argv, message in cases:
        assert cli.main(["prune", "--method", "magnitude", *argv]) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert (notes / "keep.txt").read_text() == "mine" and not (tmp_path / "o").exists()


@pytest.mark.parametrize("option", ["--log", "--plot"])
@pytest.mark.parametrize("resumed", [True, False])
def test_a_result_file_in_the_checkpoint_folder_is_refused_before_any_work(model_dir, tmp_path, capsys, option, resumed):
    """--log ckpt/proxsparse_state.pt replaced the training state a rerun resumes from with the JSON log, and
    --log ckpt, a folder the learning creates, ended a finished run with a traceback."""
    checkpoint = tmp_path / "ckpt"
    if resumed:
        checkpoint.mkdir()
        (checkpoint / "proxsparse_state.pt").write_bytes(b"state")
    result = checkpoint / "proxsparse_state.pt" if resumed else checkpoint
    assert _prune(model_dir, tmp_path / "out", "--checkpoint-dir", str(checkpoint), option, str(result)) == 2
    assert capsys.readouterr().err.strip() == (f"error: {option} {result} is inside the --checkpoint-dir folder, which holds "
                                               f"the training state, {checkpoint}: put it elsewhere")
    assert not (tmp_path / "out").exists()
    assert (checkpoint / "proxsparse_state.pt").read_bytes() == b"state" if resumed else not checkpoint.exists()


def test_a_calibration_file_inside_the_output_folder_an_overwrite_replaces_is_refused_and_kept(model_dir, tmp_path, capsys):
    """--output out --overwrite --calibration out/calib.txt deleted the text with the earlier folder, and
    proxsparse.json recorded a calibration file that no longer existed."""
    out = tmp_path / "out"
    assert _prune(model_dir, out) == 0
    (out / "calib.txt").write_text(TEXT)
    capsys.readouterr()
    assert _prune(model_dir, out, "--overwrite", "--calibration", str(out / "calib.txt")) == 2
    assert capsys.readouterr().err.strip() == (f"error: --calibration {out / 'calib.txt'} is inside the --output folder, "
                                               f"which the save replaces, {out}: put it elsewhere")
    assert (out / "calib.txt").read_text() == TEXT


def test_an_empty_model_name_is_called_empty(tmp_path, capsys, monkeypatch):
    """It said "OUT is inside the model folder being pruned ()": the empty name was read as the current folder."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(["prune", "", "--output", "out", "--log", "log.json"]) == 2
    assert capsys.readouterr().err.strip() == ("error: the model name is empty: omit it for the embedded default "
                                               "('smollm2-135m-instruct'), or name a folder or hub id")
    assert list(tmp_path.iterdir()) == []


def test_the_dense_source_is_recorded_by_its_absolute_path(model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(model_dir.parent)
    assert cli.main(["prune", model_dir.name, "--output", str(tmp_path / "out"), "--method", "magnitude"]) == 0
    assert json.loads((tmp_path / "out" / "proxsparse.json").read_text())["source_model"] == str(model_dir.resolve())


def test_the_librarys_warnings_are_shown_once_as_warning_lines(tmp_path, capsys):
    """What stays dense (a tiny Mixtral's fused expert tensors) is said once, in the command's format."""
    from tiny_models import make_byte_tokenizer, make_tiny_mixtral

    folder, calibration = tmp_path / "tiny-mixtral", tmp_path / "calib.txt"
    make_tiny_mixtral().save_pretrained(folder)
    make_byte_tokenizer().save_pretrained(folder)
    calibration.write_text(TEXT)
    assert cli.main(["prune", str(folder), "--output", str(tmp_path / "out"), "--calibration", str(calibration),
                     "--samples", "4", "--seqlen", "16", "--batch-size", "2"]) == 0
    printed = " ".join(capsys.readouterr().out.split())  # the console wraps at its width
    assert printed.count("stay dense") == 1, printed
    assert "warning: 6 weight matrices are not in nn.Linear layers and stay dense (89% of the weights" in printed


def test_an_existing_output_without_overwrite_is_refused_before_the_model_loads(model_dir, tmp_path, capsys, monkeypatch):
    import proxsparse_ao.models

    def not_loaded(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(proxsparse_ao.models, "load_model", not_loaded)
    out = tmp_path / "out"
    out.mkdir()
    assert _prune(model_dir, out) == 2
    assert capsys.readouterr().err.strip() == f"error: {out} already exists: pass --overwrite to replace it"


@pytest.mark.parametrize("flag", ["--ignore", "--targets"])
def test_a_model_folder_after_a_pattern_flag_is_refused_not_swapped_for_the_embedded_model(model_dir, tmp_path, capsys, monkeypatch, flag):
    """`--ignore lm_head ./my-model` puts the folder among the patterns and leaves MODEL unset: refused
    before any model loads, naming the folder, instead of pruning the embedded model."""
    import proxsparse_ao.models

    def not_loaded(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(proxsparse_ao.models, "load_model", not_loaded)
    out = tmp_path / "out"
    assert cli.main(["prune", "--method", "magnitude", flag, "lm_head", str(model_dir), "--output", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {flag} '{model_dir}' is a folder, not a module pattern: "
                                               f"give MODEL before {flag} (its patterns take every word after it)")
    assert not out.exists()


def test_plot_without_matplotlib_is_refused_before_the_model_loads(model_dir, tmp_path, capsys, monkeypatch):
    """Not after minutes of learning, as a note beside a saved model: the run would not give what was asked."""
    import sys

    import proxsparse_ao.models

    def not_loaded(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(proxsparse_ao.models, "load_model", not_loaded)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    plot = tmp_path / "curves.png"
    assert _prune(model_dir, tmp_path / "out", "--plot", str(plot)) == 2
    assert capsys.readouterr().err.strip() == (f"error: --plot {plot}: plotting needs matplotlib, which is not installed: "
                                               "`pip install matplotlib` (the JSON log has the same numbers)")
    assert not (tmp_path / "out").exists() and not plot.exists()


def test_in_a_log_every_stage_and_loop_is_a_line_and_no_bar_leaves_a_blank_one(model_dir, tmp_path, capsys):
    """Piped or in CI: a line per stage as it starts and per quarter of each loop, instead of rich's
    bars, which print nothing there but an empty line when they close."""
    assert _prune_baseline(model_dir, tmp_path / "out", "wanda", "--eval", "--eval-tokens", "256", "--eval-seqlen", "64") == 0
    lines = capsys.readouterr().out.splitlines()
    table = next(i for i, line in enumerate(lines) if "proxsparse-ao prune (wanda)" in line)
    assert "" not in lines[:table]
    said = [line for line in lines[:table] if re.search(r": \w+ \d+/\d+", line) or line.endswith(" ...")]
    assert said[0] == f"loading {model_dir.resolve()} ..." and said[-1] == f"saving {tmp_path / 'out'} ..."
    for loop in ("dense perplexity: window 4/4", "pruning decoder blocks: block 2/2", "pruned perplexity: window 4/4"):
        assert loop in said
    assert said.index("dense perplexity: window 4/4") < said.index("pruning decoder blocks: block 2/2") < said.index("pruned perplexity: window 4/4")
