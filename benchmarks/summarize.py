"""Mean and spread over seeds of benchmark JSON files (`learn_eval.py` runs and `compare` runs).

    .venv/bin/python benchmarks/summarize.py benchmarks/results/issue9/*.json

Runs are grouped by label with its seed suffix removed (`default_s1` -> `default`; a compare
row by its method, `compare:sparsegpt-mask`, except a ProxSparse row with the default
settings, which joins `default`). For every evaluation text it prints the mean
perplexity, the sample standard deviation and the min..max over the seeds, with the learning
or pruning time and peak memory, as a Markdown table.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from script_input import OneLineParser, run_script  # noqa: E402

from proxsparse_ao.quiet import quiet_libraries  # noqa: E402

quiet_libraries()  # before the config imports torchao, which logs its failures at import time

from proxsparse_ao.config import ProxSparseConfig  # noqa: E402


def _without_seed(config: dict) -> dict:
    return {key: value for key, value in config.items() if key != "seed"}


def runs(paths: list[Path]) -> list[dict]:
    """One record per method run: group, seed, ppl by text, seconds, peak memory (GiB), moved."""
    found = []
    for path in paths:
        data = json.loads(path.read_text())
        if "settings" in data:  # proxsparse-tool compare
            seed = data["settings"]["calibration"]["seed"]
            for row in data["rows"]:
                memory = row.get("peak_memory_bytes")
                default = row["method"] == "proxsparse" and _without_seed(row["config"]) == _without_seed(ProxSparseConfig().to_dict())
                found.append({"group": "default" if default else f"compare:{row['method']}", "seed": seed, "ppl": row["ppl_by_text"],
                              "seconds": row.get("prune_seconds"), "memory": memory / 2**30 if memory else None,
                              "moved": None, "file": path.name})
            continue
        label = data.get("label") or path.stem
        for row in data["rows"]:
            if "error" in row:
                found.append({"group": re.sub(r"_s\d+$", "", label), "seed": data["config"]["seed"], "error": row["error"], "file": path.name})
                continue
            group = re.sub(r"_s\d+$", "", label) if row["method"] == "proxsparse" else row["method"]
            found.append({"group": group, "seed": data["config"]["seed"], "ppl": row["ppl"], "seconds": row.get("seconds"),
                          "memory": row.get("peak_rss_gib"), "moved": row.get("changed_vs_start"), "file": path.name})
    return found


def _spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} ({min(values):.2f}..{max(values):.2f})"


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
        seeds = ",".join(str(m["seed"]) for m in sorted(good, key=lambda m: m["seed"]))
        tail = [f"{statistics.mean(seconds):.0f}" if seconds else "-", f"{max(memory):.2f}" if memory else "-",
                f"{statistics.mean(moved):.1%}" if moved else "-"]
        lines.append(f"| {group} | {seeds or '-'} | " + " | ".join(cells + tail) + " |")
        for m in failed:
            lines.append(f"| {group} (seed {m['seed']}) FAILED | | {m['error']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(description="Mean and spread over seeds of learn_eval.py and compare JSON results.")
    parser.add_argument("results", nargs="+", type=Path, metavar="RESULT.json")
    records = []
    for path in parser.parse_args(argv).results:
        try:
            records += runs([path])
        except OSError as err:
            print(f"error: cannot read {path}: {err.strerror or err}", file=sys.stderr)
            return 2
        except (ValueError, KeyError, TypeError) as err:  # not JSON, or JSON of something else
            print(f"error: {path} is not a learn_eval.py or compare result ({type(err).__name__}: {err})", file=sys.stderr)
            return 2
    print(table(records))
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
