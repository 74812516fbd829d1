"""The benchmarks' speed-ups (benchmarks/timing.py, benchmarks/conftest.py): computed
from pytest-benchmark's own statistics, printed after its table and stored in its JSON."""
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _timing():
    spec = importlib.util.spec_from_file_location("benchmark_timing", BENCHMARKS / "timing.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bench(group, impl, against, low, middle):
    return {"group": group, "extra_info": {"impl": impl, "against": against}, "stats": {"min": low, "median": middle}}


def test_row_names_a_benchmark_and_its_group():
    class FakeFixture:  # the attributes of pytest-benchmark's fixture that row sets
        group = None
        extra_info = {}

    fixture = FakeFixture()
    _timing().row(fixture, "sgd_step float rates", "cpu", against=("python_loop", "foreach"))
    assert fixture.group == "sgd_step float rates"
    assert fixture.extra_info == {"impl": "cpu", "against": ["python_loop", "foreach"]}


def test_speedups_divide_the_other_rows_statistics_by_this_ones():
    timing = _timing()
    rows = [_bench("h", "plain", [], 10.0, 10.0), _bench("g", "plain", [], 2.0, 3.0),
            _bench("g", "ours", ["plain", "absent"], 1.0, 1.5), _bench("h", "ours", ["plain"], 4.0, 5.0),
            {"group": None, "extra_info": {}, "stats": {"min": 1.0, "median": 1.0}}]  # a row without `row`
    assert timing.speedups(rows) == {2: {"plain": {"min": 2.0, "median": 2.0}, "absent": None},
                                     3: {"plain": {"min": 2.5, "median": 2.0}}}
    assert timing.speedup_lines(rows) == ["g: ours vs plain: 2.00x (min), 2.00x (median)",
                                          "g: ours vs absent: not in this run",
                                          "h: ours vs plain: 2.50x (min), 2.00x (median)"]


PAIR = textwrap.dedent("""
    import time

    import pytest
    from timing import row


    @pytest.mark.parametrize("impl", ["plain", "ours"])
    def test_pair(benchmark, impl):
        row(benchmark, "pair", impl, against=("plain",) if impl == "ours" else ())
        benchmark.pedantic(time.sleep, args=(0.002 if impl == "plain" else 0.001,), rounds=5, iterations=1)
""")


def test_the_printed_and_saved_speedups_are_those_of_pytest_benchmarks_table(tmp_path):
    for name in ("conftest.py", "timing.py"):
        shutil.copy(BENCHMARKS / name, tmp_path / name)
    (tmp_path / "bench_pair.py").write_text(PAIR)
    result = subprocess.run([sys.executable, "-m", "pytest", str(tmp_path / "bench_pair.py"), "--benchmark-only",
                             f"--benchmark-json={tmp_path / 'out.json'}", "-p", "no:cacheprovider",
                             "--benchmark-group-by=group"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    saved = {b["extra_info"]["impl"]: b for b in json.loads((tmp_path / "out.json").read_text())["benchmarks"]}
    assert {b["group"] for b in saved.values()} == {"pair"}
    plain, ours = saved["plain"]["stats"], saved["ours"]["stats"]
    expected = {stat: plain[stat] / ours[stat] for stat in ("min", "median")}
    assert saved["ours"]["extra_info"]["speedup"] == {"plain": expected}
    printed = re.search(r"^pair: ours vs plain: ([\d.]+)x \(min\), ([\d.]+)x \(median\)$", result.stdout, re.M)
    assert printed, result.stdout
    assert printed.groups() == (f"{expected['min']:.2f}", f"{expected['median']:.2f}")
    assert result.stdout.index("benchmark 'pair'") < printed.start()  # after pytest-benchmark's table
