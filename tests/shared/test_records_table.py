"""The request record is defined once, in records.FIELDS: every list of field names is derived from
it, so adding a per-request metric is one table entry plus its computation in request_metrics."""

from __future__ import annotations

from pathlib import Path

from veeksha.runner.evaluation.frame import record_schema
from veeksha.runner.evaluation.plots import LABELS
from veeksha.runner.evaluation.request_metrics import finalize_record
from veeksha.shared import paths, records
from veeksha.shared.config import SLOConfig
from veeksha.shared.records import DERIVED, FIELD, FIELDS


def test_field_names_are_unique():
    assert len({f.name for f in FIELDS}) == len(FIELDS)


def test_record_is_the_driver_fields_then_the_derived_ones_before_finish_reason():
    measured = [n for n in records.REQUEST_RECORD_FIELDS if FIELD[n].origin != DERIVED]
    assert tuple(measured) == records.MEASURED_FIELDS
    assert records.REQUEST_RECORD_FIELDS[-1] == "finish_reason"


def test_every_distribution_metric_has_its_label_file_and_summary_keys():
    assert paths.DISTRIBUTION_METRICS == records.DISTRIBUTION_METRICS
    for f in records.DISTRIBUTION_FIELDS:
        assert f.label and f.axis and f.unit, f.name
        assert LABELS[f.name] == (f.label, f.axis, f.unit)
        assert paths.RunPaths(Path("/run")).distribution_csv(f.name).name == f"{f.name}.csv"


def test_slo_metrics_and_aliases_resolve_to_fields():
    for name in records.SLO_METRICS:
        canonical = SLOConfig(name="x", metric=name, value=1.0).canonical_metric
        assert FIELD[canonical].slo and FIELD[canonical].distribution
    assert SLOConfig(name="x", metric="e2e", value=1.0).canonical_metric == "end_to_end_latency"


def test_record_schema_types_every_record_field():
    assert tuple(record_schema()) == records.REQUEST_RECORD_FIELDS


def test_every_derived_field_is_computed_for_a_successful_streamed_request():
    raw = dict.fromkeys(records.DRIVER_FIELDS)
    raw.update(
        request_id=1,
        session_id=1,
        node_id=0,
        status=records.SUCCESS,
        is_stream=True,
        scheduler_ready_at=1.0,
        scheduler_dispatched_at=1.001,
        client_picked_up_at=1.002,
        client_completed_at=1.5,
        result_processed_at=1.501,
        num_output_tokens=3,
        num_reasoning_tokens=1,
        chunk_times=[1.1, 1.3, 1.5],
        first_answer_at=1.3,
        last_answer_at=1.5,
        num_answer_chunks=2,
    )
    rec = finalize_record(raw)
    assert tuple(rec) == records.REQUEST_RECORD_FIELDS
    missing = [name for name in records.DERIVED_FIELDS if rec[name] is None]
    assert missing == []  # a new DERIVED field without its computation fails here
