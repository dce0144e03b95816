"""A trial's own failure, kept in its run folder (local or on S3) with the sweep invocation it
happened in: Tune's retries in that invocation raise it again without training; `--resume`, a new
invocation, trains the trial again. End to end through a sweep: tests/orchestrator/test_sweep.py."""

import pytest

from tipslab.jobs import storage
from tipslab.jobs.train.state import RunStopped
from tipslab.orchestrator.trial import TRIAL_FAILED_FILE, failed_before, record_failure


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_failure_is_final_in_its_invocation_only(where, tmp_path, request):
    root = request.getfixturevalue("s3") if where == "s3" else str(tmp_path)
    folder = storage.join(root, "ray", "spec-a-seed0-0-sweep1-abcdef012345")
    assert failed_before(folder, "first") is None  # nothing failed yet: train
    record_failure(folder, RunStopped("non-finite loss at step 1: term 'distill' = nan"), "first")
    assert storage.exists(storage.join(folder, TRIAL_FAILED_FILE))
    error = "RunStopped: non-finite loss at step 1: term 'distill' = nan"
    assert failed_before(folder, "first") == error  # Tune's retry in the same invocation: raise it again
    assert failed_before(folder, "resumed") is None  # a resumed sweep: train again
    record_failure(folder, ValueError("evaluation failed"), "resumed")
    assert failed_before(folder, "resumed") == "ValueError: evaluation failed"
    assert failed_before(folder, "first") is None  # the record is the latest invocation's
