"""Zero-shot accuracy of an in-memory model through lm-eval: local tasks shipped here, standard ones by name.

Local tasks (`local_winogrande`, `local_science_mc`, `local_physical_intuition`) are YAML
templates in `proxsparse_ao/tasks/` over JSONL files in a data folder: the `data_dir`
argument, else $PROXSPARSE_ZEROSHOT_DATA, else `../shared/data/zeroshot` next to the
project checkout. Each line of a local task's file must be a JSON object with the fields
its YAML reads (`_FIELDS`); the files are checked before any model work, so bad data is a
ProxSparseError naming the file, line and field instead of a traceback from deep in lm-eval.
Any other name is looked up among lm-eval's tasks (needs the hub).
"""

from __future__ import annotations

import glob
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ProxSparseError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DATA_ENV = "PROXSPARSE_ZEROSHOT_DATA"
_DATA_FILE = re.compile(r"@DATA_DIR@/([\w.-]+)")

# The fields each local task reads from a JSONL line, with their JSON types: from the task's
# YAML (`{{query}}`, `gold`, `{{choices}}`) or, for local_winogrande, lm-eval's
# winogrande/preprocess_winogrande.py, which its YAML includes.
_FIELDS: dict[str, dict[str, type]] = {
    "local_physical_intuition": {"query": str, "choices": list, "gold": int},
    "local_science_mc": {"question": str, "choices": list, "gold": int},
    "local_winogrande": {"sentence": str, "option1": str, "option2": str, "answer": str},
}
_TYPE_NAMES = {str: "a string", list: "a list", int: "an integer"}


@dataclass(frozen=True)
class ZeroShot:
    """lm-eval's two multiple-choice accuracies per task, their unweighted averages over tasks, and the item counts.

    `accuracy` is lm-eval's `acc` (the choice with the highest log-likelihood) and `average` is
    always its mean. `accuracy_norm` is lm-eval's `acc_norm` (log-likelihood divided by the
    choice's length in characters, as many pruning papers report for ARC, HellaSwag or PIQA),
    None for a task lm-eval reports no `acc_norm` for (WinoGrande-like tasks).
    `average_norm` is the mean of `acc_norm`, None unless every task has one: a mean over fewer
    tasks than `average` covers would not be comparable with it.
    """

    accuracy: dict[str, float]
    average: float
    items: dict[str, int]
    accuracy_norm: dict[str, float | None]
    average_norm: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def _templates() -> dict[str, str]:
    folder = resources.files("proxsparse_ao") / "tasks"
    return {entry.name[: -len(".yaml")]: entry.read_text() for entry in folder.iterdir() if entry.name.endswith(".yaml")}


LOCAL_TASKS = tuple(sorted(_templates()))


def default_data_dir() -> Path:
    """The zero-shot data folder used when none is given: $PROXSPARSE_ZEROSHOT_DATA, else ../shared/data/zeroshot."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "zeroshot"


def _render(names: Sequence[str], data_dir: Path, dest: Path) -> None:
    """Write the chosen local tasks' YAMLs into `dest` with their paths filled in; missing or malformed data is an error."""
    import lm_eval

    tasks_root = Path(lm_eval.__file__).parent / "tasks"
    templates = _templates()
    if names and data_dir.is_file():
        raise ProxSparseError(f"the zero-shot data folder {data_dir} is a file: point --zeroshot-data "
                              f"(or ${DATA_ENV}) at the folder holding the tasks' JSONL files")
    for name in names:
        text = templates[name]
        for needed in _DATA_FILE.findall(text):
            if not (data_dir / needed).is_file():
                raise ProxSparseError(
                    f"task {name} needs {data_dir / needed}, which does not exist: point --zeroshot-data "
                    f"(or ${DATA_ENV}) at the folder holding {needed}"
                )
            _check_rows(name, data_dir / needed)
        # the data path is a datasets glob pattern in a double-quoted YAML string: a folder named with
        # '[', '"' or '\\' would otherwise make lm-eval drop the task or datasets fail with a traceback
        folder = glob.escape(data_dir.resolve().as_posix())
        text = text.replace("@DATA_DIR@", _yaml_quoted(folder)).replace("@LM_EVAL_TASKS@", _yaml_quoted(tasks_root.as_posix()))
        (dest / f"{name}.yaml").write_text(text)


def _yaml_quoted(text: str) -> str:
    """`text` escaped for the inside of a double-quoted YAML string (JSON's escapes are YAML's)."""
    return json.dumps(text)[1:-1]


def _check_rows(name: str, path: Path) -> None:
    """Refuse a task file lm-eval would fail on with a traceback: not UTF-8, no items, a line that is not a
    JSON object, a missing, mistyped or unusable field."""
    fields = _FIELDS[name]
    wanted = ", ".join(fields)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise ProxSparseError(f"{path} is not UTF-8 text: task {name} needs one JSON object per line") from None
    except OSError as err:
        raise ProxSparseError(f"cannot read {path} for task {name}: {err.strerror or err}") from None
    items = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ProxSparseError(f"{where} is not JSON ({err.msg}): task {name} needs one JSON object per line") from None
        except RecursionError:
            raise ProxSparseError(f"{where} is not usable JSON (nested too deeply): task {name} needs one JSON object per line") from None
        if not isinstance(row, dict):
            raise ProxSparseError(f"{where} is not a JSON object: task {name} needs one with the fields {wanted}")
        missing = [field for field in fields if field not in row]
        if missing:
            listed = ", ".join(f"'{field}'" for field in missing)
            plural = "s" if len(missing) > 1 else ""
            raise ProxSparseError(f"{where} lacks the field{plural} {listed} that task {name} needs (fields: {wanted})")
        for field, kind in fields.items():
            if not isinstance(row[field], kind) or isinstance(row[field], bool):
                got = json.dumps(row[field])[:60]
                raise ProxSparseError(f"{where}: field '{field}' must be {_TYPE_NAMES[kind]} for task {name}, got {got}")
        problem = _value_problem(name, row)
        if problem:
            raise ProxSparseError(f"{where}: {problem} for task {name}")
        items += 1
    if not items:
        raise ProxSparseError(f"{path} holds no items: task {name} needs one JSON object per line with the fields {wanted}")


def _value_problem(name: str, row: dict) -> str | None:
    """What makes a well-typed row unusable by the task's prompt code, if anything."""
    if name == "local_winogrande":
        if "_" not in row["sentence"]:
            return "field 'sentence' has no '_' blank to fill"
        if row["answer"] not in ("1", "2"):
            return f"field 'answer' must be \"1\" or \"2\", got {json.dumps(row['answer'])[:60]}"
        return None
    choices = row["choices"]
    if not choices or not all(isinstance(choice, str) for choice in choices):
        return "field 'choices' must be a non-empty list of strings"
    if not 0 <= row["gold"] < len(choices):
        return f"field 'gold' is {row['gold']}, not an index into the {len(choices)} choices"
    return None


def _lm(model, tokenizer, batch_size: int, progress: Callable[[int, int], None] | None):
    """lm-eval's HFLM around the in-memory model, reporting loglikelihood progress instead of printing it."""
    from lm_eval.models.huggingface import HFLM

    class _Quiet(HFLM):
        def loglikelihood(self, requests, disable_tqdm: bool = False):
            self._done, self._total = 0, len(requests)
            return super().loglikelihood(requests, disable_tqdm=True)

        def _model_call(self, inps, *args, **kwargs):
            out = super()._model_call(inps, *args, **kwargs)
            self._done = min(self._done + inps.shape[0], self._total)
            if progress is not None:
                progress(self._done, self._total)
            return out

    return _Quiet(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Silence lm-eval's per-task tqdm bar and the datasets bars for the duration of a run, then restore them."""
    import datasets
    import lm_eval.api.task as task_module

    bars_were_on = datasets.is_progress_bar_enabled()
    original = task_module.tqdm
    task_module.tqdm = lambda iterable, *args, **kwargs: iterable
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        task_module.tqdm = original
        if bars_were_on:
            datasets.enable_progress_bars()


@contextmanager
def _no_git_probe() -> Iterator[None]:
    """Keep lm-eval from running `git describe` in the working directory during a run, then restore it.

    simple_evaluate records the commit of the current directory through a git subprocess whose
    stderr is not redirected, so outside a checkout git prints "fatal: not a git repository".
    Only the accuracies of lm-eval's results are read here, so the hash is recorded as None."""
    import lm_eval.evaluator as evaluator

    original = getattr(evaluator, "get_git_commit_hash", None)
    if original is None:
        yield
        return
    evaluator.get_git_commit_hash = lambda: None
    try:
        yield
    finally:
        evaluator.get_git_commit_hash = original


def check_tasks(tasks: Sequence[str], data_dir: str | Path | None = None) -> None:
    """Fail fast, before any model work: unknown task names, and local tasks whose data is missing or malformed.

    lm-eval's index of its own tasks takes seconds to build, so it is consulted only for names
    that are not local tasks."""
    local = [name for name in tasks if name in LOCAL_TASKS]
    folder = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    with tempfile.TemporaryDirectory(prefix="proxsparse-check-") as tmp:
        _render(local, folder, Path(tmp))
    standard = [name for name in tasks if name not in LOCAL_TASKS]
    if standard:
        from lm_eval.tasks import TaskManager

        _raise_unknown([name for name in standard if name not in TaskManager().all_tasks])


def _raise_unknown(unknown: Sequence[str]) -> None:
    if unknown:
        raise ProxSparseError(
            f"unknown zero-shot task {', '.join(unknown)}: use a local task "
            f"({', '.join(LOCAL_TASKS)}) or an lm-eval task name"
        )


def zero_shot(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tasks: str | Sequence[str],
    *,
    limit: int | None = None,
    batch_size: int = 8,
    data_dir: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ZeroShot:
    """0-shot accuracy (`acc`, and `acc_norm` where the task has it) of `model` on `tasks` (one name or
    several; first `limit` items of each).

    `progress(done, total)` is called as loglikelihood requests are scored. Unknown task
    names, missing or malformed local data and standard tasks whose data cannot be fetched
    raise a ProxSparseError.
    """
    if isinstance(tasks, str):
        tasks = [tasks]
    if not tasks:
        raise ProxSparseError("no zero-shot tasks given")
    if limit is not None and limit < 1:
        raise ProxSparseError(f"limit must be at least 1, got {limit}")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    local = [name for name in tasks if name in LOCAL_TASKS]
    folder = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    with tempfile.TemporaryDirectory(prefix="proxsparse-tasks-") as tmp, _no_progress_bars(), _no_git_probe():
        _render(local, folder, Path(tmp))
        standard = [name for name in tasks if name not in LOCAL_TASKS]
        # lm-eval's own index of thousands of YAMLs takes seconds to build: only when needed.
        manager = TaskManager(include_path=tmp, include_defaults=bool(standard))
        _raise_unknown([name for name in tasks if name not in manager.all_tasks])
        if standard:
            try:
                manager.load(standard)
            except Exception as err:  # datasets/hub failures come in many types
                reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
                raise ProxSparseError(
                    f"could not load the data of {', '.join(standard)} from the Hugging Face hub ({reason[:200]}); "
                    f"offline, use the local tasks: {', '.join(LOCAL_TASKS)}"
                ) from None
        results = simple_evaluate(
            model=_lm(model, tokenizer, batch_size, progress),
            tasks=list(tasks),
            num_fewshot=0,
            limit=limit,
            task_manager=manager,
            bootstrap_iters=0,
            log_samples=False,
        )
    return _scores(results, tasks)


def _scores(results: dict, tasks: Sequence[str]) -> ZeroShot:
    """The ZeroShot of `tasks` from simple_evaluate's results: `acc` and, where the task has it, `acc_norm`."""
    accuracy = {name: float(results["results"][name]["acc,none"]) for name in tasks}
    accuracy_norm = {name: _optional(results["results"][name].get("acc_norm,none")) for name in tasks}
    items = {name: int(results["n-samples"][name]["effective"]) for name in tasks}
    norms = [value for value in accuracy_norm.values() if value is not None]
    return ZeroShot(
        accuracy=accuracy,
        average=sum(accuracy.values()) / len(accuracy),
        items=items,
        accuracy_norm=accuracy_norm,
        average_norm=sum(norms) / len(norms) if len(norms) == len(tasks) else None,
    )


def _optional(value: object) -> float | None:
    return None if value is None else float(value)
