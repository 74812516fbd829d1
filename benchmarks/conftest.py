"""pytest-benchmark reporting of the benchmarks: after its table, the speed-up
of each row over the rows it names (timing.row), from that table's own
statistics; the same ratios go into its JSON (--benchmark-json,
--benchmark-autosave) as extra_info["speedup"]."""
import pytest

from timing import speedup_lines, speedups


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's own table
def pytest_terminal_summary(terminalreporter, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None:
        return
    lines = speedup_lines([bench.as_dict(include_data=False) for bench in session.benchmarks if not bench.has_error])
    if lines:
        timer = config.getoption("benchmark_timer", None) or "the default timer"
        terminalreporter.write_sep("-", f"speed-ups: the other row's time / this row's, from the table above "
                                        f"({timer})")
        for line in lines:
            terminalreporter.write_line(line)


def pytest_benchmark_update_json(config, benchmarks, output_json):
    rows = output_json["benchmarks"]
    for index, ratios in speedups(rows).items():
        rows[index]["extra_info"] = dict(rows[index]["extra_info"], speedup=ratios)
