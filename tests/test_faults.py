"""Fault injection (tests/faults.py): every long job, SIGKILLed at seeded moments and rerun, ends as an
uninterrupted run does, and never leaves a file that looks complete while it is not.

The default suite runs two capture trials (the last file events of a run, where a crash once lost run.json,
and a kill mid-write); `-m faults` runs the whole set: 25 trials, every phase of every job."""

from __future__ import annotations

import pytest

from faults import TRIALS, Harness, World

DEFAULT = [("capture", 2), ("capture", 4)]


@pytest.fixture(scope="session")
def harness(tmp_path_factory) -> Harness:
    return Harness(World(tmp_path_factory.mktemp("faults_world")), tmp_path_factory.mktemp("faults"))


def check(harness: Harness, job: str, index: int) -> None:
    trial = harness.trial(job, index)
    assert trial.killed, f"the kill ({trial.trigger}) came after the run had finished"
    assert not trial.at_kill, (
        f"after the kill ({trial.trigger}) files looked complete but were not: {trial.at_kill}"
    )
    assert trial.rerun == "ok", trial.rerun
    assert not trial.differences, (
        f"the rerun's artifacts differ from an uninterrupted run's: {trial.differences}"
    )
    assert not trial.unusable, f"the next command cannot use the folder: {trial.unusable}"


@pytest.mark.parametrize("job, index", DEFAULT)
def test_a_killed_job_reruns_to_the_uninterrupted_result(harness, job, index):
    check(harness, job, index)


@pytest.mark.faults
@pytest.mark.parametrize(
    "job, index", [(job, i) for job, n in TRIALS.items() for i in range(n) if (job, i) not in DEFAULT]
)
def test_every_fault_trial(harness, job, index):
    check(harness, job, index)
