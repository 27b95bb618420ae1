"""What the uploader puts in a W&B run's summary, from a run directory's verdict files."""

from __future__ import annotations

from veeksha.uploader.wandb_run import health_summary, slo_summary


def slo(name: str, met: bool, observed: float) -> dict[str, object]:
    return {"name": name, "met": met, "observed_value": observed, "threshold": 1.0}


def test_every_slo_keeps_its_own_verdict_when_names_collide() -> None:
    # Two SLOs of one name (a directory written before names had to be unique), and two names equal
    # once '/' (which would nest W&B keys) is replaced: no verdict may overwrite another.
    results = [
        slo("TTFC", False, 25.0),
        slo("TTFC", True, 0.5),
        slo("P90/TBC", False, 3.0),
        slo("P90_TBC", True, 0.2),
    ]
    summary = slo_summary({"all_slos_met": False, "results": results})
    assert summary["slo/TTFC/met"] is False and summary["slo/TTFC/observed"] == 25.0
    assert summary["slo/TTFC_2/met"] is True and summary["slo/TTFC_2/observed"] == 0.5
    assert summary["slo/P90_TBC/met"] is False and summary["slo/P90_TBC_2/met"] is True
    assert len(summary) == 1 + 3 * len(results)


def test_a_suffixed_name_does_not_take_the_place_of_a_real_one() -> None:
    results = [slo("a", True, 1.0), slo("a", False, 2.0), slo("a_2", True, 3.0)]
    summary = slo_summary({"all_slos_met": False, "results": results})
    assert [summary[f"slo/{k}/observed"] for k in ("a", "a_2", "a_2_2")] == [1.0, 2.0, 3.0]


def test_health_checks_of_one_key_keep_their_own_result() -> None:
    checks = [{"name": "x/y", "result": "FAILED"}, {"name": "x_y", "result": "SKIPPED"}]
    summary = health_summary({"all_passed": False, "checks": checks})
    assert summary["health/x_y/result"] == "FAILED" and summary["health/x_y/passed"] is False
    assert summary["health/x_y_2/result"] == "SKIPPED" and "health/x_y_2/passed" not in summary
