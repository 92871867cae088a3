"""The README and the CLI's own examples say only what the code accepts: every command line
they show parses, every Python name they import exists, every call they show binds to the
function's signature, and the test command is the one CI runs."""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import inspect
import io
import re
import shlex
from pathlib import Path

import pytest

from proxsparse_ao.tools import assets, cli, compare, distributed, prune, quickstart, verify
from proxsparse_ao.tools import eval as eval_command

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
CLI_EPILOGS = {"cli": cli.EPILOG} | {m.__name__.rsplit(".", 1)[1]: m.EXAMPLES
                                     for m in (assets, compare, eval_command, prune, quickstart, verify)}


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.M | re.S)


def shell_commands(text: str, program: str) -> list[list[str]]:
    """The argument lists given to `program` in shell text: continuations joined, comments
    dropped, `&&`-chains split."""
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        if program not in line:
            continue
        words = shlex.split(line, comments=True)
        for start, word in enumerate(words):
            if word.endswith(program):
                rest = words[start + 1:]
                commands.append(rest[:rest.index("&&")] if "&&" in rest else rest)
    return commands


def inline_commands(text: str, program: str) -> list[list[str]]:
    """Commands written inline with their options (`program verify` alone names a command)."""
    return [shlex.split(span)[1:] for span in re.findall(rf"`({program} [^` ]+ [^`]+)`", text)]


def parse_error(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """argparse's complaint about argv, or None when it parses."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(argv)
    except SystemExit as exit_:
        return stderr.getvalue().strip() or f"exit {exit_.code}"
    return None


README_BASH = "\n".join(code_blocks(README, "bash"))
TOOL_COMMANDS = (shell_commands(README_BASH, "proxsparse-tool") + inline_commands(README, "proxsparse-tool")
                 + [argv for text in CLI_EPILOGS.values() for argv in shell_commands(text, "proxsparse-tool")
                    if argv[:1] != ["COMMAND"]])


def test_the_readme_and_the_help_examples_show_commands_to_check():
    assert len(TOOL_COMMANDS) >= 25
    assert {argv[0] for argv in TOOL_COMMANDS if argv} >= {m.__name__.rsplit(".", 1)[1] for m in cli.COMMANDS}


@pytest.mark.parametrize("argv", TOOL_COMMANDS, ids=" ".join)
def test_every_shown_proxsparse_tool_command_parses(argv):
    assert parse_error(cli.build_parser(), argv) is None


TORCHRUN_COMMANDS = (shell_commands(README_BASH, "proxsparse_ao.tools.distributed")
                     + shell_commands(distributed.EXAMPLES, "proxsparse_ao.tools.distributed"))


def test_the_readme_and_the_help_show_torchrun_commands_of_the_tools_module_only():
    assert len(TORCHRUN_COMMANDS) >= 4
    assert "-m proxsparse_ao.distributed" not in README  # the library module has no command line


@pytest.mark.parametrize("argv", TORCHRUN_COMMANDS, ids=" ".join)
def test_every_shown_torchrun_command_parses(argv):
    assert parse_error(distributed.build_parser(), argv) is None


def test_a_wrong_flag_in_a_shown_command_would_be_caught():
    assert "--sampels" in parse_error(cli.build_parser(), ["prune", "--output", "x", "--sampels", "3"])
    assert shell_commands("a && proxsparse-tool verify x --json y.json  # note\n", "proxsparse-tool") == [
        ["verify", "x", "--json", "y.json"]]


def imported_names(block: str) -> dict[str, object]:
    """What the block's imports bind, resolved for real (an ImportError fails the test)."""
    names: dict[str, object] = {}
    for node in ast.walk(ast.parse(block)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = importlib.import_module(alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"README: {node.module} has no {alias.name}"
                names[alias.asname or alias.name] = getattr(module, alias.name)
    return names


def resolve(node: ast.expr, names: dict[str, object]) -> object | None:
    """The object an imported name or an attribute path on one stands for; None for anything else."""
    if isinstance(node, ast.Name):
        return names.get(node.id)
    if isinstance(node, ast.Attribute):
        owner = resolve(node.value, names)
        if inspect.ismodule(owner):
            assert hasattr(owner, node.attr), f"README: {owner.__name__} has no {node.attr}"
            return getattr(owner, node.attr)
    return None


PYTHON_BLOCKS = code_blocks(README, "python")


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[f"block{i}" for i in range(len(PYTHON_BLOCKS))])
def test_every_readme_python_call_binds_to_the_real_signature(block):
    names = imported_names(block)
    calls = [node for node in ast.walk(ast.parse(block)) if isinstance(node, ast.Call)]
    checked = 0
    for call in calls:
        target = resolve(call.func, names)
        if target is None or not getattr(target, "__module__", "").startswith("proxsparse_ao"):
            continue
        signature = inspect.signature(target)
        args = [object()] * len(call.args)
        kwargs = {kw.arg: object() for kw in call.keywords if kw.arg is not None}
        try:
            signature.bind(*args, **kwargs)
        except TypeError as err:
            pytest.fail(f"README: {ast.unparse(call)} does not fit {target.__qualname__}{signature}: {err}")
        checked += 1
    assert checked >= 1


def test_the_prox_example_runs_as_shown():
    block = next(b for b in PYTHON_BLOCKS if "prox_2to4_(w" in b)
    scope: dict[str, object] = {}
    exec(compile(block, "README.md", "exec"), scope)
    groups = scope["w"].reshape(-1, 4)
    assert ((groups != 0).sum(dim=1) <= 2).float().mean() > 0.5
    assert (scope["w"] == scope["z"]).all()


def test_the_readme_test_command_is_the_one_ci_runs():
    setup_and_run, tests = code_blocks(README, "bash")[:2]
    assert setup_and_run.startswith("./setup.sh && ")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert tests.strip() in ci.splitlines()


def _markdown_table(text: str, header_start: str) -> list[str]:
    """The lines of the Markdown table whose header line starts with `header_start`."""
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    table = []
    for line in lines[first:]:
        if not line.startswith("|"):
            break
        table.append(line.strip())
    return table


def test_the_readme_compare_table_is_the_shipped_compare_run():
    shipped = (ROOT / "benchmarks" / "compare.md").read_text(encoding="utf-8")
    assert _markdown_table(README, "| method | mask only |") == _markdown_table(shipped, "| method | mask only |")
