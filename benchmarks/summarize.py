"""Mean and spread over seeds of benchmark JSON files (`learn_eval.py` runs and `compare` runs).

    .venv/bin/python benchmarks/summarize.py benchmarks/compare.json benchmarks/results/issue9/*.json

A `learn_eval.py` run is grouped by its label with the seed suffix removed (`default_s1` ->
`default`), a compare row by its method (`compare:sparsegpt-mask`). A compare ProxSparse row
joins the `learn_eval.py` group whose runs recorded the same settings, seed aside (the seed
varies within a group): the settings each file recorded are compared, not today's
`ProxSparseConfig` defaults, so a default added since the runs were made does not split them.
Rows of one group name that recorded different settings are told apart by the fields that
differ (`compare:proxsparse (lr=0.001)`). For every evaluation text it prints the mean
perplexity, the sample standard deviation and the min..max over the seeds, with the learning
or pruning time and peak memory, as a Markdown table. A compare file that says it is
incomplete (an interrupted run, a failed method) is named on stderr with the methods missing.
Results of `learn_vs_magnitude.py` (this script's old name) hold one perplexity, on wikipedia.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from script_input import OneLineParser, run_script

OLD_TEXT = "wikipedia"  # learn_vs_magnitude.py, learn_eval.py's old name, scored this text alone and stored a bare number


def setting(config: dict | None) -> str | None:
    """What a run's result depends on besides its seed: its recorded config without `seed`, as one key."""
    if config is None:
        return None
    return json.dumps({key: value for key, value in config.items() if key != "seed"}, sort_keys=True)


def file_runs(path: Path, data: dict) -> list[dict]:
    """The records of one file: group, settings key, seed, ppl by text, seconds, peak memory (GiB), moved."""
    found = []
    if "settings" in data:  # proxsparse-tool compare
        calibration = data["settings"]["calibration"]
        seed = calibration["seed"] if calibration else None
        for row in data["rows"]:
            record = {"group": f"compare:{row['method']}", "setting": setting(row.get("config")), "seed": seed,
                      "file": path.name, "compare_proxsparse": row["method"] == "proxsparse"}
            if "error" in row:
                found.append(record | {"error": row["error"]})
                continue
            memory = row.get("peak_memory_bytes")
            found.append(record | {"ppl": row["ppl_by_text"], "seconds": row.get("prune_seconds"),
                                   "memory": memory / 2**30 if memory else None, "moved": None})
        return found
    label = data.get("label") or path.stem
    for row in data["rows"]:
        learned = row["method"] == "proxsparse"
        record = {"group": re.sub(r"_s\d+$", "", label) if learned else row["method"],
                  "setting": setting(data["config"]) if learned else None, "seed": data["config"]["seed"], "file": path.name}
        if "error" in row:
            found.append(record | {"error": row["error"]})
            continue
        ppl = row["ppl"] if isinstance(row["ppl"], dict) else {OLD_TEXT: row["ppl"]}
        found.append(record | {"ppl": ppl, "seconds": row.get("seconds"), "memory": row.get("peak_rss_gib"),
                               "moved": row.get("changed_vs_start")})
    return found


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
    settings: dict[str, set[str]] = defaultdict(set)
    for record in records:
        if record["setting"] is not None:
            settings[record["group"]].add(record["setting"])
    for record in records:
        keys = settings.get(record["group"], set())
        if len(keys) > 1 and record["setting"] is not None:
            configs = [json.loads(key) for key in keys]
            mine = json.loads(record["setting"])
            fields = sorted({field for c in configs for field in c if any(c.get(field) != o.get(field) for o in configs)})
            record["group"] += " (" + " ".join(f"{field}={json.dumps(mine.get(field))}" for field in fields) + ")"
    return records


def incomplete(path: Path, data: dict) -> str | None:
    """A note naming a compare file that says it is incomplete, with the methods missing and why; None otherwise."""
    if "settings" not in data or data.get("complete", True):
        return None
    missing = "; ".join(f"{method}: {why}" for method, why in data.get("unfinished", {}).items())
    return f"note: {path} is incomplete (status {data.get('status', 'unknown')}): {missing or 'no method is missing'}"


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} ({min(values):.2f}..{max(values):.2f})"


def _seed_order(record: dict) -> tuple[bool, int]:
    return record["seed"] is None, record["seed"] or 0


def table(records: list[dict]) -> str:
    groups: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        groups[record["group"]].append(record)
    texts = sorted({t for r in records if "ppl" in r for t in r["ppl"]}, key=lambda t: (t != "wikipedia", t))
    lines = ["| run | seeds | " + " | ".join(f"PPL {t} (mean ± sd, min..max)" for t in texts) + " | time (s) | peak GiB | moved |",
             "|---" * (len(texts) + 5) + "|"]
    for group, members in groups.items():
        good = [m for m in members if "ppl" in m]
        failed = [m for m in members if "error" in m]
        cells = [_spread([m["ppl"][t] for m in good if t in m["ppl"]]) if good else "-" for t in texts]
        seconds = [m["seconds"] for m in good if m["seconds"] is not None]
        memory = [m["memory"] for m in good if m["memory"] is not None]
        moved = [m["moved"] for m in good if m["moved"] is not None]
        seeds = ",".join(str(m["seed"]) for m in sorted(good, key=_seed_order) if m["seed"] is not None)
        tail = [f"{statistics.mean(seconds):.0f}" if seconds else "-", f"{max(memory):.2f}" if memory else "-",
                f"{statistics.mean(moved):.1%}" if moved else "-"]
        lines.append(f"| {group} | {seeds or '-'} | " + " | ".join(cells + tail) + " |")
        for m in failed:
            lines.append(f"| {group} (seed {m['seed']}) FAILED | | {m['error']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(description="Mean and spread over seeds of learn_eval.py and compare JSON results.")
    parser.add_argument("results", nargs="+", type=Path, metavar="RESULT.json")
    records, notes = [], []
    for path in parser.parse_args(argv).results:
        try:
            data = json.loads(path.read_text())
            records += file_runs(path, data)
            notes += filter(None, [incomplete(path, data)])
        except OSError as err:
            print(f"error: cannot read {path}: {err.strerror or err}", file=sys.stderr)
            return 2
        except (ValueError, KeyError, TypeError) as err:  # not JSON, or JSON of something else
            print(f"error: {path} is not a learn_eval.py or compare result ({type(err).__name__}: {err})", file=sys.stderr)
            return 2
    print(table(named(records)))
    for note in notes:
        print(note, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
