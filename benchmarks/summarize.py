"""Mean and spread over seeds of benchmark JSON files (`learn_eval.py` runs and `compare` runs).

    .venv/bin/python benchmarks/summarize.py benchmarks/results/issue9/*.json

A `learn_eval.py` run is grouped by its label with the seed suffix removed (`default_s1` ->
`default`), a compare row by its method (`compare:sparsegpt-mask`). A compare ProxSparse row
joins the `learn_eval.py` group whose runs recorded the same settings, seed aside (the seed
varies within a group): the settings each file recorded are compared, not today's
`ProxSparseConfig` defaults, so a default added since the runs were made does not split them.
Where a run recorded which layers it pruned (`pruned_layers`: their count and a fingerprint of
their sorted names), those layers stand for its `targets` and `ignore` patterns: runs that pruned
the same layers with different patterns (a default `ignore` that grew) are one setting. A run
that did not record them takes the pruned layers of a run on the same model with the same
patterns; where none did, its patterns are compared as they are. Rows of one group name that
recorded different settings are told apart by the fields that differ (`compare:proxsparse
(lr=0.001)`). For every evaluation text it prints the mean perplexity, the sample standard
deviation and the min..max over the seeds, with the mean learning or pruning time, memory and
moved groups, as a Markdown table.

Memory (GiB, CPU resident memory, the largest over the seeds), one measure per column:
* "added GiB": what the pruning added at its peak over what was resident when it started
  (learn_eval `memory_added_gib`, compare `prune_memory_bytes`).
* "pruning peak GiB": the process's peak RSS during the pruning, model included (learn_eval
  `peak_rss_gib` when the row also has a `memory_added_gib` number; compare `peak_memory_bytes`,
  which has been that from the start). Older `learn_eval.py` files (no `memory_added_gib`), and
  rows whose peak could not be reset (`memory_added_gib` or `prune_memory_bytes` null), hold the
  process's lifetime peak instead, an upper bound of the pruning's: a group with nothing else
  shows it as `≤ X`; a group that also has pruning peaks leaves it out, named on stderr.
* Compare files run on CUDA hold the CUDA allocator's figures, not resident memory: they are
  left out of both columns, named on stderr (any other device measured resident memory). Dense rows prune nothing and have no memory.

A compare file that says it is incomplete (an interrupted run, a failed method) is named on
stderr with the methods missing. Results of `learn_vs_magnitude.py` (this script's old name) hold
one perplexity, on wikipedia. A file that is not JSON, or JSON of another shape, or files that
hold no rows at all, is one line naming what is wrong and exit status 2.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from script_input import EXIT_BAD_INPUT, OneLineParser, run_script

OLD_TEXT = "wikipedia"  # learn_vs_magnitude.py, learn_eval.py's old name, scored this text alone and stored a bare number
SELECTION = ("targets", "ignore")  # the config fields that choose the pruned layers
SEVERAL = "(several)"  # how a setting's name shows a field its runs recorded differently (patterns that pruned the same layers)
GIB = 2**30

OBJECT, ARRAY, STRING, BOOLEAN, NULL = "an object", "an array", "a string", "true or false", "null"
NUMBER, INTEGER = "a number", "an integer"
_KINDS = {dict: OBJECT, list: ARRAY, str: STRING, bool: BOOLEAN, int: NUMBER, float: NUMBER, type(None): NULL}


class NotAResult(ValueError):
    """A file that is JSON but not shaped like a learn_eval.py or compare result; the message says where."""


def _kind(value: Any) -> str:
    """What a JSON value is, in words."""
    return _KINDS.get(type(value), type(value).__name__)


def _is(value: Any, kind: str) -> bool:
    if kind in (NUMBER, INTEGER):
        return isinstance(value, int if kind == INTEGER else (int, float)) and not isinstance(value, bool)
    return _KINDS.get(type(value)) == kind


def field(holder: dict, key: str, where: str, *kinds: str, required: bool = False) -> Any:
    """`holder[key]` checked to be one of the JSON `kinds` (None when absent and not `required`)."""
    name = f"{where}.{key}" if where else key
    if key not in holder:
        if required:
            raise NotAResult(f"{name} is missing")
        return None
    value = holder[key]
    if not any(_is(value, kind) for kind in kinds):
        raise NotAResult(f"{name} is {_kind(value)}, not {' or '.join(kinds)}")
    return value


def _rows(data: dict) -> list[tuple[str, dict]]:
    """The file's rows, each an object, with the name to report it by."""
    rows = field(data, "rows", "", ARRAY, required=True)
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise NotAResult(f"rows[{index}] is {_kind(row)}, not {OBJECT}")
    return [(f"rows[{index}]", row) for index, row in enumerate(rows)]


def _numbers(holder: dict, key: str, where: str) -> dict[str, float]:
    """An object of numbers, e.g. perplexity by text."""
    values = field(holder, key, where, OBJECT, required=True)
    for text in values:
        field(values, text, f"{where}.{key}", NUMBER)
    return values


def _pruned_layers(row: dict, where: str) -> dict | None:
    """The row's record of the layers it pruned ({count, sha256}), None where it has none."""
    pruned = field(row, "pruned_layers", where, OBJECT, NULL)
    if pruned is not None:
        field(pruned, "count", f"{where}.pruned_layers", INTEGER, required=True)
        field(pruned, "sha256", f"{where}.pruned_layers", STRING, required=True)
    return pruned


def setting(config: dict | None) -> dict | None:
    """What a run's result depends on besides its seed: its recorded config without `seed`."""
    return None if config is None else {key: value for key, value in config.items() if key != "seed"}


def _compare_runs(path: Path, data: dict) -> list[dict]:
    settings = field(data, "settings", "", OBJECT, required=True)
    calibration = field(settings, "calibration", "settings", OBJECT, NULL)
    seed = field(calibration, "seed", "settings.calibration", INTEGER, NULL) if calibration else None
    model = field(settings, "model", "settings", STRING, NULL)
    resident = not on_cuda(field(settings, "device", "settings", STRING))
    for key, kinds in (("complete", (BOOLEAN,)), ("status", (STRING,)), ("unfinished", (OBJECT,))):
        field(data, key, "", *kinds)
    for method in data.get("unfinished", {}):
        field(data["unfinished"], method, "unfinished", STRING)
    found = []
    for where, row in _rows(data):
        method = field(row, "method", where, STRING, required=True)
        config = field(row, "config", where, OBJECT, NULL)
        record = {"group": f"compare:{method}", "config": setting(config), "pruned": _pruned_layers(row, where),
                  "model": model, "seed": seed, "file": path.name, "compare_proxsparse": method == "proxsparse"}
        if "error" in row:
            found.append(record | {"error": field(row, "error", where, STRING)})
            continue
        peak, added, before = (field(row, key, where, NUMBER, NULL)
                               for key in ("peak_memory_bytes", "prune_memory_bytes", "memory_before_bytes"))
        # a newer row's peak was reset at the start when it could say what was added; an older row (no
        # prune_memory_bytes) could reset it wherever /proc was readable, which its starting RSS shows
        exact = added is not None if "prune_memory_bytes" in row else bool(before)
        memory = {"peak": peak / GIB if peak is not None and exact else None,
                  "bound": peak / GIB if peak is not None and not exact else None,
                  "added": added / GIB if added is not None else None} if resident else {}
        found.append(record | {"ppl": _numbers(row, "ppl_by_text", where),
                               "seconds": field(row, "prune_seconds", where, NUMBER, NULL), "moved": None, **memory})
    return found


def _learn_eval_runs(path: Path, data: dict) -> list[dict]:
    config = field(data, "config", "", OBJECT, required=True)
    seed = field(config, "seed", "config", INTEGER, NULL)
    label = field(data, "label", "", STRING, NULL) or path.stem
    model = field(data, "model", "", STRING, NULL)
    found = []
    for where, row in _rows(data):
        method = field(row, "method", where, STRING, required=True)
        learned = method == "proxsparse"
        record = {"group": re.sub(r"_s\d+$", "", label) if learned else method, "config": setting(config) if learned else None,
                  "pruned": _pruned_layers(row, where), "model": model, "seed": seed, "file": path.name}
        if "error" in row:
            found.append(record | {"error": field(row, "error", where, STRING)})
            continue
        ppl = field(row, "ppl", where, NUMBER, OBJECT, required=True)
        ppl = _numbers(row, "ppl", where) if isinstance(ppl, dict) else {OLD_TEXT: ppl}
        peak, added = (field(row, key, where, NUMBER, NULL) for key in ("peak_rss_gib", "memory_added_gib"))
        pruned = method != "dense"
        found.append(record | {"ppl": ppl, "seconds": field(row, "seconds", where, NUMBER, NULL),
                               "moved": field(row, "changed_vs_start", where, NUMBER, NULL),
                               "peak": peak if pruned and added is not None else None,
                               "bound": peak if pruned and added is None else None, "added": added if pruned else None})
    return found


def file_runs(path: Path, data: Any) -> list[dict]:
    """The records of one file: group, settings, pruned layers, seed, ppl by text, seconds, memory (GiB), moved.
    Raises NotAResult, naming the first field that is missing or of the wrong type, for any other JSON."""
    if not isinstance(data, dict):
        raise NotAResult(f"the file holds {_kind(data)}, not {OBJECT}")
    field(data, "rows", "", ARRAY, required=True)
    return _compare_runs(path, data) if "settings" in data else _learn_eval_runs(path, data)


def with_setting_keys(records: list[dict]) -> list[dict]:
    """Each record's `setting`: its model and config (seed aside) as one key, with the layers it pruned in
    place of its `targets`/`ignore` where known (recorded, or recorded by a run on the same model with the
    same patterns); and `shown`, the same with the patterns kept, to name a setting by."""

    def patterns(record: dict) -> str:
        return json.dumps([record["model"], *(record["config"].get(key) for key in SELECTION)])

    known: dict[str, set[str]] = defaultdict(set)
    for record in records:
        if record["config"] is not None and record["pruned"] is not None:
            known[patterns(record)].add(json.dumps(record["pruned"], sort_keys=True))
    for record in records:
        config = record["config"]
        if config is None:
            record["setting"] = None
            continue
        pruned = record["pruned"]
        if pruned is None and len(known.get(patterns(record), ())) == 1:
            pruned = json.loads(next(iter(known[patterns(record)])))
        record["shown"] = config | {"model": record["model"], "pruned_layers": pruned}
        if pruned is not None:
            config = {key: value for key, value in config.items() if key not in SELECTION}
        record["setting"] = json.dumps(config | {"model": record["model"], "pruned_layers": pruned}, sort_keys=True)
    return records


def _shown(field: str, value: Any) -> str:
    """A setting's field as its name shows it: JSON, and `unrecorded` for layers a run did not record."""
    return "unrecorded" if field == "pruned_layers" and value is None else json.dumps(value)


def named(records: list[dict]) -> list[dict]:
    """Compare ProxSparse rows join the one learn_eval group of their settings; one name holding several
    settings is split, each part named by the fields in which it differs."""
    learned: dict[str, set[str]] = defaultdict(set)
    for record in records:
        if record["setting"] is not None and not record.get("compare_proxsparse"):
            learned[record["setting"]].add(record["group"])
    for record in records:
        if record.get("compare_proxsparse") and len(learned.get(record["setting"], ())) == 1:
            (record["group"],) = learned[record["setting"]]
    settings: dict[str, dict[str, dict]] = defaultdict(dict)  # group -> setting key -> its shown form
    for record in records:
        if record["setting"] is not None:
            shown = settings[record["group"]].setdefault(record["setting"], dict(record["shown"]))
            for key in shown.keys() | record["shown"].keys():  # runs of one setting with other patterns
                if shown.get(key) != record["shown"].get(key):
                    shown[key] = SEVERAL
    for record in records:
        configs = list(settings.get(record["group"], {}).values())
        if len(configs) > 1 and record["setting"] is not None:
            mine = settings[record["group"]][record["setting"]]
            fields = sorted({field for c in configs for field in c if any(c.get(field) != o.get(field) for o in configs)})
            record["group"] += " (" + " ".join(f"{field}={_shown(field, mine.get(field))}" for field in fields) + ")"
    return records


def incomplete(path: Path, data: dict) -> str | None:
    """A note naming a compare file that says it is incomplete, with the methods missing and why; None otherwise."""
    if "settings" not in data or data.get("complete", True):
        return None
    missing = "; ".join(f"{method}: {why}" for method, why in data.get("unfinished", {}).items())
    return f"note: {path} is incomplete (status {data.get('status', 'unknown')}): {missing or 'no method is missing'}"


def on_cuda(device: str | None) -> bool:
    """Whether a compare run's memory figures are the CUDA allocator's (any other device: resident memory)."""
    return device is not None and device.split(":")[0] == "cuda"


def off_cpu(path: Path, data: dict) -> str | None:
    """A note naming a compare file run on CUDA, whose memory figures the table leaves out; None otherwise."""
    device = data["settings"].get("device") if "settings" in data else None
    if not on_cuda(device):
        return None
    return (f"note: {path} ran on {device}: its memory is the CUDA allocator's, not resident memory, "
            "so the memory columns leave it out")


def _cell(text: str) -> str:
    """`text` as one Markdown table cell: line breaks become spaces and `|` is escaped, so that a
    multi-line error message or a label with a pipe neither ends its row early nor adds columns."""
    return re.sub(r"\s*[\r\n]+\s*", " ", text).replace("|", "\\|")


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} ({min(values):.2f}..{max(values):.2f})"


def _seed_order(record: dict) -> tuple[bool, int]:
    return record["seed"] is None, record["seed"] or 0


def _largest(records: list[dict], key: str) -> float | None:
    values = [r[key] for r in records if r.get(key) is not None]
    return max(values) if values else None


def peak_cell(members: list[dict]) -> tuple[str, list[str]]:
    """The group's pruning peak (`≤ X` where it has only lifetime peaks) and the files whose lifetime peak
    it leaves out because pruning peaks are beside them."""
    peak, bound = _largest(members, "peak"), _largest(members, "bound")
    if peak is not None:
        return f"{peak:.2f}", sorted({m["file"] for m in members if m.get("bound") is not None})
    return ("-" if bound is None else f"≤ {bound:.2f}"), []


def grouped(records: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        groups[record["group"]].append(record)
    return groups


def peak_cells(groups: dict[str, list[dict]]) -> dict[str, tuple[str, list[str]]]:
    """Each group's `peak_cell` over its runs with results, worked out once for the table and the notes."""
    return {group: peak_cell([m for m in members if "ppl" in m]) for group, members in groups.items()}


def table(groups: dict[str, list[dict]], peaks: dict[str, tuple[str, list[str]]]) -> str:
    records = [r for members in groups.values() for r in members]
    texts = sorted({t for r in records if "ppl" in r for t in r["ppl"]}, key=lambda t: (t != "wikipedia", t))
    header = ["run", "seeds", *(f"PPL {_cell(t)} (mean ± sd, min..max)" for t in texts), "time (s)", "pruning peak GiB",
              "added GiB", "moved"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for group, members in groups.items():
        good = [m for m in members if "ppl" in m]
        failed = [m for m in members if "error" in m]
        cells = [_spread([m["ppl"][t] for m in good if t in m["ppl"]]) if good else "-" for t in texts]
        seconds = [m["seconds"] for m in good if m["seconds"] is not None]
        moved = [m["moved"] for m in good if m["moved"] is not None]
        added = _largest(good, "added")
        seeds = ",".join(str(m["seed"]) for m in sorted(good, key=_seed_order) if m["seed"] is not None)
        tail = [f"{statistics.mean(seconds):.0f}" if seconds else "-", peaks[group][0],
                "-" if added is None else f"{added:.2f}", f"{statistics.mean(moved):.1%}" if moved else "-"]
        lines.append(f"| {_cell(group)} | {seeds or '-'} | " + " | ".join(cells + tail) + " |")
        for m in failed:
            lines.append(f"| {_cell(group)} (seed {m['seed']}) FAILED | | {_cell(m['error'])} |")
    return "\n".join(lines)


def repeated_seeds(groups: dict[str, list[dict]]) -> list[str]:
    """Notes naming a seed that a group holds more than once (the same run given twice, or two runs of
    one setting and seed): its mean and spread count that seed once per file."""
    notes = []
    for group, members in groups.items():
        files: dict[Any, list[str]] = defaultdict(list)
        for member in members:
            if "ppl" in member and member["seed"] is not None:
                files[member["seed"]].append(member["file"])
        for seed, names in files.items():
            if len(names) > 1:
                notes.append(f"note: {group}: seed {seed} is in {len(names)} files ({', '.join(names)}): "
                             "the mean and spread count it once per file")
    return notes


def memory_notes(peaks: dict[str, tuple[str, list[str]]]) -> list[str]:
    """Notes naming the lifetime peaks a group's pruning-peak cell leaves out, and what `≤` means where shown."""
    notes, bounded = [], False
    for group, (cell, left_out) in peaks.items():
        bounded |= cell.startswith("≤")
        if left_out:
            notes.append(f"note: {group}: pruning peak GiB leaves out the process's lifetime peak recorded by "
                         f"{', '.join(left_out)} (not the same measure)")
    if bounded:
        notes.insert(0, "note: pruning peak GiB '≤ X': those runs recorded only the process's lifetime peak RSS "
                        "(older learn_eval.py files, or a peak that could not be reset), an upper bound of the pruning's peak")
    return notes


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(description="Mean and spread over seeds of learn_eval.py and compare JSON results.")
    parser.add_argument("results", nargs="+", type=Path, metavar="RESULT.json")
    paths = parser.parse_args(argv).results
    records, notes = [], []
    for path in paths:
        try:
            data = json.loads(path.read_text())
            records += file_runs(path, data)
        except OSError as err:
            print(f"error: cannot read {path}: {err.strerror or err}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except ValueError as err:  # not JSON (NotAResult: JSON of another shape)
            why = err if isinstance(err, NotAResult) else f"not JSON: {err}"
            print(f"error: {path} is not a learn_eval.py or compare result ({why})", file=sys.stderr)
            return EXIT_BAD_INPUT
        notes += filter(None, [incomplete(path, data), off_cpu(path, data)])
    if not records:  # a header and nothing under it would pass for a summary
        print(f"error: no runs to summarise: {', '.join(map(str, paths))} hold{'s' if len(paths) == 1 else ''} no rows",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    groups = grouped(named(with_setting_keys(records)))
    peaks = peak_cells(groups)
    print(table(groups, peaks))
    for note in notes + repeated_seeds(groups) + memory_notes(peaks):
        print(note, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
