"""shared/csv_lines.py: the complete lines of a file appended line by line, as a crash leaves it."""

from __future__ import annotations

from veeksha.shared.csv_lines import complete_lines


def test_a_file_ending_in_a_newline_is_kept_whole() -> None:
    lines = complete_lines(b"elapsed_s,a\n1,2\n")
    assert lines.data == b"elapsed_s,a\n1,2\n" and lines.cut_line is None


def test_a_last_line_without_its_newline_is_dropped_and_numbered() -> None:
    """A crash mid-append leaves the last line short; even a short line that still parses
    (`3,1.5` for `3,1.5,20.0`) would be a wrong row, so it goes whatever it holds."""
    lines = complete_lines(b"elapsed_s,a,b\n1,,\n2,10.0,20.0\n3,1.5")
    assert lines.data == b"elapsed_s,a,b\n1,,\n2,10.0,20.0\n" and lines.cut_line == 4


def test_a_header_without_its_newline_is_cut_off_too() -> None:
    """Every writer writes its header with its newline (timeseries, scraped metrics): one without it
    was cut mid-write (`elapsed_s,dispatched` of a longer header), by the run or by a copy."""
    lines = complete_lines(b"elapsed_s,a")
    assert lines.data == b"" and lines.cut_line == 1


def test_a_header_with_its_newline_and_no_rows_is_complete() -> None:
    lines = complete_lines(b"elapsed_s,a\n")
    assert lines.data == b"elapsed_s,a\n" and lines.cut_line is None


def test_an_empty_file_has_no_lines() -> None:
    assert complete_lines(b"").data == b"" and complete_lines(b"").cut_line is None
