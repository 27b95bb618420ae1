"""metrics/timeseries.png from a timeseries.csv: drawn for any run, even one without a row."""

from __future__ import annotations

from pathlib import Path

from veeksha.runner.evaluation.timeseries_plot import plot_timeseries
from veeksha.shared.records import TIMESERIES_COLUMNS

PNG = b"\x89PNG\r\n\x1a\n"


def write_rows(path: Path, rows: list[list[object]]) -> Path:
    lines = [",".join(TIMESERIES_COLUMNS)] + [",".join("" if v is None else str(v) for v in r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_rows_with_empty_latency_cells_are_drawn(tmp_path: Path) -> None:
    rows = [
        [0, 5, 0, 0, 2.5, 0, 100, 0, None, None, None, None],
        [1, 5, 5, 1, 4.0, 320, 300, 5, 0.02, 0.05, 0.004, 0.01],
        [2, 0, 5, 0, 1.0, 320, 20, 5, 1.5, 2.5, 0.004, 0.01],
    ]
    csv = write_rows(tmp_path / "timeseries.csv", rows)
    plot_timeseries(csv, tmp_path / "timeseries.png")
    assert (tmp_path / "timeseries.png").read_bytes()[:8] == PNG


def test_a_run_without_rows_still_gets_a_picture(tmp_path: Path) -> None:
    csv = write_rows(tmp_path / "timeseries.csv", [])
    plot_timeseries(csv, tmp_path / "timeseries.png")
    assert (tmp_path / "timeseries.png").read_bytes()[:8] == PNG


SERVER_HEADER = "elapsed_s,vllm:num_requests_running,vllm:num_requests_waiting,vllm:kv_cache_usage_perc\n"


def test_a_server_metrics_line_cut_off_by_a_crash_still_gets_its_panels(tmp_path: Path) -> None:
    """A crash mid-append leaves the scraped file's last line without its newline (here a number
    cut short, text to a CSV reader): the line is left out and the rest drawn."""
    csv = write_rows(tmp_path / "timeseries.csv", [[0, 5, 0, 0, 2.5, 0, 100, 0, None, None, None, None]])
    server = tmp_path / "server_metrics.csv"
    server.write_text(SERVER_HEADER + "1,2,0,0.5\n2,3,1,0.6\n3,4,1,1.5e-")
    plot_timeseries(csv, tmp_path / "timeseries.png", server)
    assert (tmp_path / "timeseries.png").read_bytes()[:8] == PNG


def test_values_that_are_no_number_are_drawn_as_gaps(tmp_path: Path) -> None:
    """A stray value in a complete line (either file) is a gap in its line, never a failed plot."""
    csv = write_rows(tmp_path / "timeseries.csv", [[0, 5, 0, 0, 2.5, 0, 100, 0, "x", None, None, None]])
    server = tmp_path / "server_metrics.csv"
    server.write_text(SERVER_HEADER + "1,2,0,0.5\n2,-,1,0.6\n")
    plot_timeseries(csv, tmp_path / "timeseries.png", server)
    assert (tmp_path / "timeseries.png").read_bytes()[:8] == PNG
