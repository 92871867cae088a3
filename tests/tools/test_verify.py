"""`proxsparse-tool verify` driven as a user would, on tiny Llama folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from cli_runner import CliRun, run_cli, run_cli_process
from tiny_models import make_byte_tokenizer, make_tiny_llama

TEXT = "The quick brown fox jumps over the lazy dog, and the dog does not mind at all. " * 60


def cli(*args: str) -> CliRun:
    return run_cli("verify", *args)


def save_tiny_pruned(root: Path, dense_dir: Path) -> Path:
    """A magnitude-pruned tiny Llama saved with save_pruned, its source_model the dense folder."""
    from proxsparse_ao.export import save_pruned
    from proxsparse_ao.masks import apply_mask, magnitude_mask
    from proxsparse_ao.targets import select_targets

    model = make_tiny_llama()
    masks = {}
    with torch.no_grad():
        for name, layer in select_targets(model, ["Linear"], ["re:.*lm_head"]).layers.items():
            masks[name] = magnitude_mask(layer.weight)
            layer.weight.copy_(apply_mask(layer.weight, masks[name]))
    return save_pruned(model, root / "pruned", masks, {"method": "magnitude", "source_model": str(dense_dir)},
                       tokenizer=make_byte_tokenizer())


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("verify")
    dense = root / "dense"
    make_tiny_llama().save_pretrained(dense)
    make_byte_tokenizer().save_pretrained(dense)
    text = root / "text.txt"
    text.write_text(TEXT)
    return {"root": root, "dense": dense, "pruned": save_tiny_pruned(root, dense), "text": text}


@pytest.fixture(scope="module")
def passing_run(folders) -> tuple[CliRun, dict]:
    """One full run (structure, perplexity vs the dense source, an inductor compile) shared by the asserts."""
    out = folders["root"] / "verify.json"
    run = cli(str(folders["pruned"]), "--text", str(folders["text"]), "--seqlen", "64", "--json", str(out),
              "--min-speedup", "1.5")
    assert run.returncode == 0, run.stdout + run.stderr
    return run, json.loads(out.read_text())


def test_passing_model_reports_every_check(passing_run):
    run, result = passing_run
    assert result["pattern_ok"] is True and result["bad_groups"] == 0 and result["target_layers"] == 14
    assert result["pattern"]["2"] == 1.0
    assert result["ppl"] > 1 and result["baseline_ppl"] > 1 and result["baseline_ppl"] != result["ppl"]
    assert result["compile_eligible"] == 14 and result["compile_rewritten"] == 14
    assert result["deployment"]["outputs_match"] and result["deployment"]["dtype"] == "bfloat16"
    assert result["checks"] == {"structure": "pass", "accuracy": "pass", "deployment": "pass",
                                "speed": result["speed_skipped"] and "skipped: " + result["speed_skipped"]}
    assert result["exit_code"] == 0 and result["passed"] is True


def test_speed_is_honestly_skipped_on_cpu(passing_run):
    run, result = passing_run
    assert result["speedup"] is None and result["speed"] is None
    assert result["speed_skipped"].startswith("needs CUDA sm80+")
    assert "skipped: needs CUDA sm80+" in result["checks"]["speed"]
    assert "needs CUDA sm80+" in run.stdout and "PASS" in run.stdout and "verify passed" in run.stdout


def test_passing_run_is_quiet_on_stderr(passing_run):
    run, _ = passing_run
    assert run.stderr == ""


def test_min_speedup_on_cpu_is_not_checked_rather_than_faked(passing_run):
    run, _ = passing_run
    assert "--min-speedup 1.5 not checked" in " ".join(run.stdout.split()) and "x (" not in run.stdout


def test_non_24_layers_exit_1_and_are_named(folders, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(folders["pruned"], broken)
    weights = load_file(str(broken / "model.safetensors"))
    for name in ("model.layers.0.mlp.up_proj.weight", "model.layers.1.self_attn.k_proj.weight"):
        weights[name] = torch.randn_like(weights[name])
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "out.json"
    run = cli(str(broken), "--json", str(out))
    assert run.returncode == 1, run.stdout + run.stderr
    assert "model.layers.0.mlp.up_proj" in run.stdout and "model.layers.1.self_attn.k_proj" in run.stdout
    assert "2 of 14 target layers fail the structure check" in run.stdout
    result = json.loads(out.read_text())
    assert result["pattern_ok"] is False and result["bad_groups"] > 0
    assert sorted(result["failing_layers"]) == ["model.layers.0.mlp.up_proj", "model.layers.1.self_attn.k_proj"]
    assert result["checks"]["deployment"] == "skipped: the structure check failed"
    assert "Traceback" not in run.stdout + run.stderr


def test_dense_model_without_metadata_fails_structure(folders):
    run = cli(str(folders["dense"]), "--no-ppl", "--no-compile")
    assert run.returncode == 1
    assert "default targets (no proxsparse.json)" in run.stdout and "14 of 14 target layers" in run.stdout


def one_line_error(run: CliRun, code: int, *needles: str) -> None:
    assert run.returncode == code, run.stdout + run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    for needle in needles:
        assert needle in lines[0]


def bad_input(tmp_path: Path, target: Path, *extra: str) -> CliRun:
    out = tmp_path / "out.json"
    run = cli(str(target), "--json", str(out), *extra)
    assert not out.exists() and not list(tmp_path.glob(".out.json*"))
    return run


def test_path_that_does_not_exist(tmp_path):
    one_line_error(bad_input(tmp_path, tmp_path / "nowhere"), 2, "not found")


def test_folder_that_is_not_a_model(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("hello")
    one_line_error(bad_input(tmp_path, folder), 2, "not a Hugging Face model folder")


def test_truncated_safetensors(folders, tmp_path):
    folder = tmp_path / "truncated"
    shutil.copytree(folders["pruned"], folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    one_line_error(bad_input(tmp_path, folder), 2, "could not load the model")


def test_corrupt_masks_file(folders, tmp_path):
    folder = tmp_path / "badmasks"
    shutil.copytree(folders["pruned"], folder)
    (folder / "masks.safetensors").write_bytes(b"\x00garbage" * 10)
    one_line_error(bad_input(tmp_path, folder), 2, "masks.safetensors cannot be read")


def test_metadata_that_does_not_parse(folders, tmp_path):
    folder = tmp_path / "badjson"
    shutil.copytree(folders["pruned"], folder)
    (folder / "proxsparse.json").write_text('{"format": "proxsparse-2:4/v1", "targets": [')
    one_line_error(bad_input(tmp_path, folder), 2, "proxsparse.json does not parse")


def test_model_with_no_target_layers(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "gpt2"  # GPT-2 blocks use Conv1D, not nn.Linear: nothing to prune
    GPT2LMHeadModel(GPT2Config(vocab_size=256, n_embd=64, n_layer=1, n_head=2, n_positions=64)).save_pretrained(folder)
    make_byte_tokenizer().save_pretrained(folder)
    one_line_error(bad_input(tmp_path, folder), 2, "no target layers")


def test_unknown_task_name(folders, tmp_path):
    one_line_error(bad_input(tmp_path, folders["pruned"], "--tasks", "no_such_task_xyz"), 2, "unknown zero-shot task")


def copy_of(folders: dict[str, Path], tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    shutil.copytree(folders["pruned"], folder)
    return folder


def drop_tensor(folder: Path, name: str) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(str(folder / "model.safetensors"))
    del weights[name]
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})


def edit_config(folder: Path, **values) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(values)
    (folder / "config.json").write_text(json.dumps(config))


def test_a_missing_layer_norm_tensor_is_unusable_input_not_a_pass(folders, tmp_path):
    folder = copy_of(folders, tmp_path, "missnorm")
    drop_tensor(folder, "model.layers.1.input_layernorm.weight")
    one_line_error(bad_input(tmp_path, folder, "--no-ppl", "--no-compile"), 2,
                   "model.safetensors lacks 1 tensor the config needs: model.layers.1.input_layernorm.weight")


def test_a_missing_target_weight_is_unusable_input_not_a_2_4_failure(folders, tmp_path):
    folder = copy_of(folders, tmp_path, "misstarget")
    drop_tensor(folder, "model.layers.0.self_attn.q_proj.weight")
    one_line_error(bad_input(tmp_path, folder, "--no-ppl", "--no-compile"), 2,
                   "lacks 1 tensor the config needs: model.layers.0.self_attn.q_proj.weight")


def test_a_config_claiming_more_layers_than_the_weights_hold_is_unusable_input(folders, tmp_path):
    folder = copy_of(folders, tmp_path, "cfglayers")
    edit_config(folder, num_hidden_layers=3)
    one_line_error(bad_input(tmp_path, folder, "--no-ppl", "--no-compile"), 2, "lacks 9 tensors the config needs")


def test_a_saved_mask_that_keeps_all_4_of_4_is_unusable_input_naming_the_layer(folders, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = copy_of(folders, tmp_path, "allon")
    codes = load_file(str(folder / "masks.safetensors"))
    codes["model.layers.1.mlp.down_proj"].fill_(15)
    save_file(codes, str(folder / "masks.safetensors"))
    one_line_error(bad_input(tmp_path, folder, "--no-ppl", "--no-compile"), 2,
                   "the saved mask of model.layers.1.mlp.down_proj does not keep exactly 2 of every 4")


def test_a_config_transformers_refuses_is_a_one_line_error(folders, tmp_path):
    folder = copy_of(folders, tmp_path, "cfgheads")
    edit_config(folder, num_attention_heads=3)
    one_line_error(bad_input(tmp_path, folder, "--no-ppl", "--no-compile"), 2,
                   "could not load the model in", "is not a multiple of the number of attention heads")


@pytest.mark.parametrize("values", [{"hidden_act": "no_such_activation"}, {"num_attention_heads": 0},
                                    {"rope_parameters": {"rope_type": "no_such_rope"}}])
def test_a_config_value_the_model_cannot_be_built_with_is_a_one_line_error_naming_the_config(folders, tmp_path, values):
    """transformers' KeyError or ZeroDivisionError from building the model was a traceback with exit status 1."""
    folder = copy_of(folders, tmp_path, "cfgbuild")
    edit_config(folder, **values)
    one_line_error(bad_input(tmp_path, folder, "--no-ppl", "--no-compile"), 2,
                   "could not load the model in", "its config.json holds a value this transformers cannot build the model with")


def test_a_corrupt_pytorch_bin_is_a_one_line_error(folders, tmp_path):
    folder = copy_of(folders, tmp_path, "garbbin")
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"\x00garbage" * 1000)
    one_line_error(bad_input(tmp_path, folder, "--no-ppl", "--no-compile"), 2,
                   "could not load the model in", "not a readable PyTorch checkpoint")


def test_a_missing_baseline_folder_is_refused_before_the_model_is_loaded(folders, tmp_path):
    folder = copy_of(folders, tmp_path, "truncated")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # loading it would fail: the baseline must be refused first
    one_line_error(bad_input(tmp_path, folder, "--baseline", str(tmp_path / "nowhere")), 2,
                   "--baseline: model folder not found")
    one_line_error(bad_input(tmp_path, folder, "--baseline", str(folders["text"])), 2, "--baseline:", "is not a folder")


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGED_BASELINES = {
    "config.json that is not JSON": (lambda f: (f / "config.json").write_text('{"model_type": "llama",'),
                                     "is not a valid JSON file"),
    "no weight files": (lambda f: (f / "model.safetensors").unlink(), "has no weights"),
    "a truncated weight file": (lambda f: truncate(f / "model.safetensors"), "could not load the model in"),
    "a missing tensor": (lambda f: drop_tensor(f, "model.layers.1.input_layernorm.weight"),
                         "lacks 1 tensor the config needs: model.layers.1.input_layernorm.weight"),
}


def verify_in_process(folders, baseline: Path, tmp_path: Path, monkeypatch, capsys, *extra: str):
    """`verify PRUNED --baseline BASELINE` in this process, with perplexity and the compile check replaced by
    stubs that record they ran: (exit code, stdout, stderr, the long checks that ran, whether --json was written)."""
    import proxsparse_ao.evaluation
    import proxsparse_ao.verification
    from proxsparse_ao.tools import cli as tool

    ran = []

    def long_work(name: str):
        def refuse(*args, **kwargs):
            ran.append(name)
            raise AssertionError(f"{name} ran before the --baseline was refused")
        return refuse

    monkeypatch.setattr(proxsparse_ao.evaluation, "perplexity", long_work("perplexity"))
    monkeypatch.setattr(proxsparse_ao.verification, "check_deployment", long_work("compile check"))
    out = tmp_path / "out.json"
    reads_text = not {"--no-ppl", "--no-compile"} <= set(extra)
    code = tool.main(["verify", str(folders["pruned"]), "--baseline", str(baseline), "--json", str(out),
                      *(["--text", str(folders["text"])] if reads_text else []), *extra])
    printed = capsys.readouterr()
    return code, printed.out, printed.err, ran, out.exists()


@pytest.mark.parametrize("damage", list(DAMAGED_BASELINES))
def test_a_damaged_baseline_folder_is_refused_before_the_perplexity_and_compile_checks(folders, tmp_path, damage,
                                                                                        monkeypatch, capsys):
    baseline = shutil.copytree(folders["dense"], tmp_path / "dense")
    change, problem = DAMAGED_BASELINES[damage]
    change(baseline)
    code, out, err, ran, wrote = verify_in_process(folders, baseline, tmp_path, monkeypatch, capsys, "--seqlen", "64")
    assert code == 2 and ran == [] and "perplexity" not in out and not wrote
    (line,) = err.strip().splitlines()
    assert line.startswith("error: --baseline: ") and problem in line


def test_a_hub_id_as_baseline_is_left_to_loading_time(folders, capsys):
    from proxsparse_ao.tools import cli

    argv = ["verify", str(folders["pruned"]), "--baseline", "SomeOrg/dense-model", "--no-compile", "--text", str(folders["text"]),
            "--seqlen", "64"]
    assert cli.main(argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()  # offline here: the hub is asked when the model is needed
    assert line.startswith("error: --baseline: could not load 'SomeOrg/dense-model' ")  # offline here, or an unknown id


def test_an_unreadable_model_folder_or_weight_file_is_a_one_line_error(folders, open_tmp, unprivileged):
    folder = shutil.copytree(folders["pruned"], open_tmp / "model")
    for path in folder.iterdir():
        path.chmod(0o644)
    (folder / "model.safetensors").chmod(0)
    run = run_cli_process("verify", str(folder), "--no-ppl", "--no-compile", prefix=unprivileged)
    one_line_error(run, 2, f"cannot read {folder / 'model.safetensors'}: Permission denied")
    folder.chmod(0)
    run = run_cli_process("verify", str(folder), "--no-ppl", "--no-compile", prefix=unprivileged)
    one_line_error(run, 2, f"cannot read the model folder {folder}: Permission denied")
    folder.chmod(0o755)


def test_a_result_file_that_could_not_be_written_or_would_clobber_the_model_is_refused_first(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    for json_path, message in ((folder / "config.json", "is inside the model folder being read"), (tmp_path, "is a folder")):
        done = cli(str(folder), "--no-ppl", "--no-compile", "--json", str(json_path))
        assert done.returncode == 2 and message in done.stderr and len(done.stderr.splitlines()) == 1
    assert (folder / "config.json").read_text() == "{}"


def test_a_result_file_inside_the_dense_source_folder_is_refused_and_the_dense_model_kept(folders, tmp_path):
    """--json dense/config.json replaced the dense model's config with verify's results: the baseline no longer loaded."""
    dense = shutil.copytree(folders["dense"], tmp_path / "dense")
    pruned = save_tiny_pruned(tmp_path, dense)  # its proxsparse.json names `dense` as source_model
    config = (dense / "config.json").read_text()
    accuracy = ["--no-compile", "--text", str(folders["text"]), "--seqlen", "64", "--json", str(dense / "config.json")]
    one_line_error(cli(str(folders["pruned"]), *accuracy, "--baseline", str(dense)), 2,
                   f"--json {dense / 'config.json'} is inside the --baseline folder {dense}: put it elsewhere")
    one_line_error(cli(str(pruned), *accuracy), 2,
                   f"--json {dense / 'config.json'} is inside the dense source folder (proxsparse.json's source_model) {dense}")
    assert (dense / "config.json").read_text() == config


def test_the_structure_check_needs_no_tokenizer_but_perplexity_names_the_missing_one(folders, tmp_path, capsys):
    from proxsparse_ao.tools import cli as tool

    folder = shutil.copytree(folders["pruned"], tmp_path / "no-tokenizer")
    for path in folder.iterdir():
        if path.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            path.unlink()
    assert tool.main(["verify", str(folder), "--no-ppl", "--no-compile"]) == 0
    assert "verify passed" in capsys.readouterr().out
    assert tool.main(["verify", str(folder), "--no-compile", "--text", str(folders["text"]), "--seqlen", "64"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: could not load the tokenizer in {folder}")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_this_machine_does_not_have_is_a_one_line_error(folders, tmp_path):
    run = bad_input(tmp_path, folders["pruned"], "--device", "cuda", "--no-ppl", "--no-compile")
    one_line_error(run, 2, "--device cuda: CUDA is not available on this machine")


@pytest.mark.parametrize("speedup", ["inf", "nan", "0"])
def test_a_speed_target_must_be_a_positive_finite_number(tmp_path, speedup):
    done = cli(str(tmp_path), "--min-speedup", speedup)
    assert done.returncode == 2 and "--min-speedup must be a positive finite number" in done.stderr


def test_an_empty_model_folder_name_is_called_empty():
    done = cli("")
    assert done.returncode == 2 and done.stderr.strip() == "error: the model folder is empty: name the pruned model's folder"


@pytest.mark.parametrize("baseline", ["", "  "])
def test_an_empty_baseline_name_is_called_empty(folders, tmp_path, baseline):
    """It said "--baseline:  is not a Hugging Face model folder (no config.json)": the empty name was read as the current folder."""
    one_line_error(bad_input(tmp_path, folders["pruned"], "--no-compile", "--baseline", baseline), 2,
                   "error: --baseline is empty: name the dense model's folder or hub id")


@pytest.mark.parametrize(("extra", "why"), [
    (["--device", "cpu"], "with --no-ppl on cpu, where the compile check runs 128 tokens unless --deploy-tokens says otherwise"),
    (["--deploy-tokens", "32"], "with --no-ppl and --deploy-tokens (the compile check's tokens)"),
])
def test_a_perplexity_window_without_perplexity_is_refused_where_the_compile_check_does_not_read_it(folders, tmp_path, extra, why):
    """--no-ppl --seqlen 64 was accepted and ignored: without perplexity --seqlen only sets the compile check's
    tokens, and only on CUDA when --deploy-tokens does not."""
    one_line_error(bad_input(tmp_path, folders["pruned"], "--no-ppl", "--seqlen", "64", *extra), 2,
                   f"error: --seqlen does nothing {why}: drop it")


def test_a_speed_target_with_the_speed_check_skipped_is_a_conflict(tmp_path):
    done = cli(str(tmp_path), "--no-compile", "--min-speedup", "1.3")
    assert done.returncode == 2
    assert done.stderr.strip() == "error: --min-speedup needs the speed check, which --no-compile skips: drop one of the two"


def test_a_binary_text_file_is_refused_before_the_model_loads(folders, tmp_path, monkeypatch, capsys):
    import proxsparse_ao.models
    from proxsparse_ao.tools import cli

    def not_loaded(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(proxsparse_ao.models, "load_model", not_loaded)
    weights = tmp_path / "notes.txt"  # a weight file under a text name
    weights.write_bytes((folders["pruned"] / "model.safetensors").read_bytes())
    out = tmp_path / "out.json"
    code = cli.main(["verify", str(folders["pruned"]), "--text", str(weights), "--json", str(out)])
    printed = capsys.readouterr()
    assert code == 2 and printed.out == "" and not out.exists()
    (line,) = printed.err.strip().splitlines()
    assert line.startswith(f"error: {weights} is not a UTF-8 text file (byte 0x")


def test_windows_longer_than_the_models_context_are_one_line_errors(folders, tmp_path):
    one_line_error(bad_input(tmp_path, folders["pruned"], "--text", str(folders["text"]), "--seqlen", "512", "--no-compile"),
                   2, "--seqlen 512 is longer than the model's maximum context of 256 tokens")
    one_line_error(bad_input(tmp_path, folders["pruned"], "--no-ppl", "--deploy-tokens", "512"),
                   2, "--deploy-tokens 512 is longer than the model's maximum context of 256 tokens")


def test_a_seqlen_beyond_the_baseline_models_context_is_refused_before_any_check_naming_the_baseline(
        folders, tmp_path, monkeypatch, capsys):
    baseline = shutil.copytree(folders["dense"], tmp_path / "short-context")
    edit_config(baseline, max_position_embeddings=32)  # the pruned model takes 256 tokens, its baseline 32
    code, out, err, ran, wrote = verify_in_process(folders, baseline, tmp_path, monkeypatch, capsys, "--seqlen", "64")
    assert code == 2 and ran == [] and out == "" and not wrote
    assert err.strip() == ("error: --baseline: --seqlen 64 is longer than the baseline model's maximum context of 32 "
                           "tokens (max_position_embeddings in its config): use at most 32")


def test_the_baseline_models_context_does_not_matter_without_perplexity(folders, tmp_path, monkeypatch, capsys):
    baseline = shutil.copytree(folders["dense"], tmp_path / "short-context")
    edit_config(baseline, max_position_embeddings=32)
    code, out, err, ran, _ = verify_in_process(folders, baseline, tmp_path, monkeypatch, capsys, "--no-ppl",  # --seqlen 1024 > 32
                                               "--no-compile", "--tasks", "local_winogrande", "--limit", "2")
    assert code == 0 and ran == [] and err == "" and "verify passed" in out and "acc (dense)" in out


def test_zero_shot_shows_acc_and_acc_norm_of_both_models_where_the_task_has_acc_norm(folders, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "200")  # one table row per line
    code, out, err, _, _ = verify_in_process(folders, folders["dense"], tmp_path, monkeypatch, capsys, "--no-ppl",
                                             "--no-compile", "--tasks", "local_winogrande", "local_science_mc",
                                             "--limit", "2")
    assert code == 0, err
    result = json.loads((tmp_path / "out.json").read_text())
    for what, key in (("sparse", "zero_shot"), ("dense", "baseline_zero_shot")):
        scores = result[key]
        assert scores["accuracy_norm"]["local_winogrande"] is None and scores["average_norm"] is None
        assert f"local_winogrande acc ({what})" in out and f"local_winogrande acc_norm ({what})" not in out
        row = next(line for line in out.splitlines() if f"local_science_mc acc_norm ({what})" in line)
        assert f"{scores['accuracy_norm']['local_science_mc']:.4f} (length-normalised)" in row


def test_a_pruned_model_as_baseline_is_refused_as_not_a_dense_source(folders, tmp_path, monkeypatch, capsys):
    code, out, err, ran, wrote = verify_in_process(folders, folders["pruned"], tmp_path, monkeypatch, capsys,
                                                   "--seqlen", "64")
    assert code == 2 and ran == [] and out == "" and not wrote
    assert err.strip() == f"error: --baseline: {folders['pruned']} is a pruned model (it has proxsparse.json), not a dense source"


def test_a_source_model_that_is_a_pruned_model_is_not_compared_as_the_dense_source(folders, tmp_path, capsys, monkeypatch):
    """`prune pruned/ --output again/` records pruned/ as source_model: verify reported it as the "dense source"
    with a sparse/dense ratio, where the explicit --baseline pruned/ is refused."""
    from proxsparse_ao.tools import cli as tool

    again = save_tiny_pruned(tmp_path, folders["pruned"])
    out = tmp_path / "out.json"
    monkeypatch.setenv("COLUMNS", "400")  # table rows on one line each
    code = tool.main(["verify", str(again), "--no-compile", "--text", str(folders["text"]), "--seqlen", "64", "--json", str(out)])
    printed, result = capsys.readouterr().out, json.loads(out.read_text())
    why = f"its source_model {folders['pruned']} is a pruned model (it has proxsparse.json), not a dense source: name one with --baseline"
    row = next(line for line in printed.splitlines() if "dense source" in line)
    assert code == 0 and "sparse/dense" not in printed and "skipped" in row and why in row
    assert result["baseline_ppl"] is None and result["baseline_error"] == why and result["ppl"] > 1


def test_a_baseline_whose_tokenizer_splits_the_text_differently_gets_no_perplexity_ratio(
        folders, tmp_path, monkeypatch, capsys):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    baseline = tmp_path / "other-tokenizer"
    shutil.copytree(folders["dense"], baseline)
    for path in baseline.glob("*token*"):
        path.unlink()
    # the same 256 bytes, the same number of tokens, but every byte under another id
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={char: 255 - index for index, char in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="Ċ").save_pretrained(baseline)
    code, out, err, ran, wrote = verify_in_process(folders, baseline, tmp_path, monkeypatch, capsys,
                                                   "--seqlen", "64", "--no-compile")
    assert code == 2 and ran == [] and not wrote and "sparse/dense" not in out
    (line,) = err.strip().splitlines()
    assert line.startswith("error: --baseline: ") and str(folders["pruned"]) in line and str(baseline) in line
    assert "their perplexities would not be comparable" in line


@pytest.mark.parametrize(("architecture", "said"), [
    ("opt", "it has a linear model.decoder.layers.0.fc1 (128x64) the pruned model lacks (and 25 more linears differ)"),
    ("llama-3-layers", "it has a linear model.layers.2.mlp.down_proj (64x128) the pruned model lacks (and 6 more linears differ)"),
])
def test_a_baseline_of_another_architecture_or_size_is_refused_before_any_comparison(
        folders, tmp_path, monkeypatch, capsys, architecture, said):
    """With the same tokenizer, an OPT baseline for a pruned Llama was reported as its "dense source" with a sparse/dense ratio."""
    from tiny_models import make_tiny_opt

    baseline = tmp_path / architecture
    (make_tiny_opt() if architecture == "opt" else make_tiny_llama(layers=3)).save_pretrained(baseline)
    make_byte_tokenizer().save_pretrained(baseline)
    capsys.readouterr()  # transformers' save progress
    for extra in (["--seqlen", "64"], ["--no-ppl", "--tasks", "local_winogrande", "--limit", "2"]):
        code, out, err, ran, wrote = verify_in_process(folders, baseline, tmp_path, monkeypatch, capsys, "--no-compile", *extra)
        assert code == 2 and ran == [] and not wrote and "sparse/dense" not in out and "acc (" not in out
        assert err.strip() == (f"error: --baseline: the dense source {baseline} is not the model {folders['pruned']} was pruned "
                               f"from: {said}; comparing with it would mean nothing (name the dense model it was pruned from)")


def test_a_baseline_with_the_same_tokenizer_is_compared(folders, tmp_path, monkeypatch, capsys):
    import proxsparse_ao.evaluation

    from proxsparse_ao.tools import cli as tool

    calls = []
    real = proxsparse_ao.evaluation.perplexity

    def recorded(model, ids, *args, **kwargs):
        calls.append(ids)
        return real(model, ids, *args, **kwargs)

    monkeypatch.setattr(proxsparse_ao.evaluation, "perplexity", recorded)

    code = tool.main(["verify", str(folders["pruned"]), "--baseline", str(folders["dense"]), "--text", str(folders["text"]),
                      "--seqlen", "64", "--no-compile"])
    assert code == 0 and "sparse/dense" in capsys.readouterr().out
    assert len(calls) == 2 and torch.equal(calls[0], calls[1])


@pytest.mark.parametrize(("speedup", "code", "verdict"), [(1.49, 1, "fail"), (1.5, 0, "pass"), (2.0, 0, "pass")])
def test_an_end_to_end_speedup_below_min_speedup_fails_the_run_and_one_at_or_above_it_passes(
        folders, tmp_path, monkeypatch, capsys, speedup, code, verdict):
    """Where speed is measured (CUDA sm80+; here the gate is opened and the measurement stubbed), --min-speedup decides."""
    import proxsparse_ao.verification as verification
    from proxsparse_ao.tools import cli as tool

    def deployed(model, ids, targets, dtype, **kwargs):
        check = verification.Deployment("bfloat16", list(targets), list(targets), {}, {}, 0.0, 0.0, 1.0, "", 0.0)
        return check, (lambda ids: None), model

    measured = []

    def timed(model, compiled, ids, layers, reps=20):
        measured.append(list(layers))
        return {"tokens": int(ids.numel()), "dense_ms": 3.0, "sparse_ms": 3.0 / speedup, "speedup": speedup,
                "per_layer": {name: {"speedup": speedup} for name in layers}}

    monkeypatch.setattr(verification, "speed_skip_reason", lambda device: None)
    monkeypatch.setattr(verification, "check_deployment", deployed)
    monkeypatch.setattr(verification, "measure_speed", timed)
    out = tmp_path / "out.json"
    assert tool.main(["verify", str(folders["pruned"]), "--no-ppl", "--text", str(folders["text"]), "--min-speedup", "1.5",
                      "--json", str(out)]) == code
    printed = " ".join(capsys.readouterr().out.split())
    result = json.loads(out.read_text())
    assert len(measured) == 1 and len(measured[0]) == 14
    assert result["speedup"] == speedup and result["speed_skipped"] is None
    assert result["checks"]["speed"] == verdict and result["exit_code"] == code and result["passed"] is (code == 0)
    assert f"{speedup:.2f}x" in printed and "needs 1.50x" in printed
    assert ("verify FAILED: speed" in printed) is (verdict == "fail")


def test_a_compiled_model_whose_logits_differ_fails_the_run_and_is_not_timed(folders, tmp_path, monkeypatch, capsys):
    """A rewrite that changes the outputs fails deployment (exit 1); its speed is not measured, even where
    it could be (CUDA sm80+; here the gate is opened and the compile check stubbed)."""
    import proxsparse_ao.verification as verification
    from proxsparse_ao.tools import cli as tool

    def deployed(model, ids, targets, dtype, **kwargs):
        check = verification.Deployment("bfloat16", list(targets), list(targets), {}, {}, 0.9, 0.01, 0.2, "", 0.0)
        return check, (lambda ids: None), model

    def timed(*args, **kwargs):
        raise AssertionError("the speed of a failed deployment was measured")

    monkeypatch.setattr(verification, "speed_skip_reason", lambda device: None)
    monkeypatch.setattr(verification, "check_deployment", deployed)
    monkeypatch.setattr(verification, "measure_speed", timed)
    out = tmp_path / "out.json"
    assert tool.main(["verify", str(folders["pruned"]), "--no-ppl", "--text", str(folders["text"]), "--min-speedup", "1.5",
                      "--json", str(out)]) == 1
    printed = " ".join(capsys.readouterr().out.split())
    result = json.loads(out.read_text())
    assert result["checks"]["deployment"] == "fail" and result["deployment"]["outputs_match"] is False
    assert result["checks"]["speed"] == "skipped: the deployment check failed" and result["speedup"] is None
    assert result["exit_code"] == 1 and "verify FAILED: deployment" in printed


def test_a_model_whose_perplexity_is_not_finite_fails_the_accuracy_check(folders, tmp_path, capsys):
    """A damaged weight outside the targets (here the final norm) keeps the structure exact 2:4 but makes
    every logit NaN: the run must fail, not report a perplexity of nan as a pass."""
    from safetensors.torch import load_file, save_file

    from proxsparse_ao.tools import cli as tool

    folder = copy_of(folders, tmp_path, "nan-norm")
    weights = load_file(str(folder / "model.safetensors"))
    weights["model.norm.weight"] = torch.full_like(weights["model.norm.weight"], float("nan"))
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "out.json"
    code = tool.main(["verify", str(folder), "--no-compile", "--text", str(folders["text"]), "--seqlen", "64", "--json", str(out)])
    result = json.loads(out.read_text())
    assert code == 1 and result["checks"]["structure"] == "pass" and result["checks"]["accuracy"] == "fail"
    assert "verify FAILED: accuracy" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(("extra", "tokens"), [((), 128), (("--deploy-tokens", "32"), 32)])
def test_the_compile_check_on_cpu_runs_128_tokens_unless_told_otherwise(folders, monkeypatch, capsys, extra, tokens):
    """On CPU the rewrite runs the reference kernel, so the check stays short: 128 tokens, not --seqlen (1024)."""
    import proxsparse_ao.verification as verification
    from proxsparse_ao.tools import cli as tool

    seen = []

    def deployed(model, ids, targets, dtype, **kwargs):
        seen.append(tuple(ids.shape))
        return verification.Deployment("bfloat16", list(targets), list(targets), {}, {}, 0.0, 0.0, 1.0, "", 0.0), None, model

    monkeypatch.setattr(verification, "check_deployment", deployed)
    assert tool.main(["verify", str(folders["pruned"]), "--no-ppl", "--text", str(folders["text"]), "--device", "cpu", *extra]) == 0
    assert seen == [(1, tokens)]
