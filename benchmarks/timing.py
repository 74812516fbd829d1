"""What the benchmarks share: CUDA synchronisation, and one set of numbers.

Every timed implementation is a pytest-benchmark row of its own, ours and the
plain way alike, and names itself with `row`:

    row(benchmark, "sgd_step float rates", "cpu", against=("python_loop", "foreach"))

group is pytest-benchmark's group: its table shows the rows of a group
together (--benchmark-group-by=group, the default), and --benchmark-compare
lines them up with a saved run. `against` names the rows of the same group
this one is compared with. The speed-ups are computed by `speedups` from
pytest-benchmark's own statistics (the table's min and median columns, in
whatever --benchmark-timer measured), printed after its table by conftest.py
and stored in its JSON as extra_info["speedup"].
"""
from __future__ import annotations

import torch

STATS = ("min", "median")


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def row(benchmark, group: str, name: str, against=()) -> None:
    """Put benchmark in group under name; against: names of the rows of the
    group whose time is divided by this one's (> 1: this row is faster)."""
    benchmark.group = group
    benchmark.extra_info.update(impl=name, against=list(against))


def speedups(benchmarks: list[dict]) -> dict[int, dict[str, dict[str, float] | None]]:
    """{index in benchmarks: {other row's name: {stat: other's stat / this row's
    stat for stat in STATS}, or None when that row is not in the run}} for every
    row that names rows to be compared with. benchmarks: pytest-benchmark's
    dicts ("group", "extra_info" from `row`, "stats")."""
    named = {}
    for bench in benchmarks:
        named.setdefault((bench["group"], bench["extra_info"].get("impl")), bench)
    out = {}
    for index, bench in enumerate(benchmarks):
        against = bench["extra_info"].get("against")
        if not against:
            continue
        out[index] = {}
        for name in against:
            other = named.get((bench["group"], name))
            out[index][name] = None if other is None else \
                {stat: other["stats"][stat] / bench["stats"][stat] for stat in STATS}
    return out


def speedup_lines(benchmarks: list[dict]) -> list[str]:
    """One line per compared pair: "GROUP: NAME vs OTHER: 2.10x (min), 2.05x (median)"."""
    lines = []
    found = speedups(benchmarks)
    for index in sorted(found, key=lambda i: benchmarks[i]["group"] or ""):  # as the table orders its groups
        bench, ratios = benchmarks[index], found[index]
        for name, ratio in ratios.items():
            shown = "not in this run" if ratio is None else \
                ", ".join(f"{ratio[stat]:.2f}x ({stat})" for stat in STATS)
            lines.append(f"{bench['group']}: {bench['extra_info']['impl']} vs {name}: {shown}")
    return lines
