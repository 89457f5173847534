"""The tests' /metrics reader: a value is read by name and labels, and a missing sample fails instead of reading 0."""

from __future__ import annotations

import pytest

from tests.metrics import sample

PAGE = """# HELP dispatch_scheduled_fired_total Scheduled messages handed over once due
# TYPE dispatch_scheduled_fired_total counter
dispatch_scheduled_fired_total 7.0
# HELP push_errors_total Errors answered to clients, by error code
# TYPE push_errors_total counter
push_errors_total{code="invalid"} 2.0
"""


def test_a_sample_is_read_by_name_and_labels() -> None:
    """An unlabelled counter by its sample name, a labelled one by its labels."""
    assert sample(PAGE, "dispatch_scheduled_fired_total") == 7.0
    assert sample(PAGE, "push_errors_total", code="invalid") == 2.0


def test_a_missing_sample_fails_unless_its_family_is_there_and_absent_is_given() -> None:
    """A misspelt name or an unrecorded label fails; ``absent`` covers only an unrecorded child of an exported family."""
    with pytest.raises(AssertionError, match="no sample dispatch_scheduled_fire_total"):
        sample(PAGE, "dispatch_scheduled_fire_total")
    with pytest.raises(AssertionError, match="no sample push_errors_total"):
        sample(PAGE, "push_errors_total", code="not_found")
    assert sample(PAGE, "push_errors_total", absent=0.0, code="not_found") == 0.0
    with pytest.raises(AssertionError):
        sample(PAGE, "push_error_total", absent=0.0, code="not_found")
