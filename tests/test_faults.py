"""Fault injection (tests/faults.py): every long job, SIGKILLed at seeded moments and rerun, ends as an
uninterrupted run does, and never leaves a file that looks complete while it is not.

The default suite runs two capture trials (the last file events of a run, where a crash once lost run.json,
and a kill mid-write); `-m faults` runs the whole set: 25 trials, every phase of every job."""

from __future__ import annotations

import random

import pytest

from faults import PHASES, TRIALS, Harness, Observed, World, plan

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


def test_kill_moments_are_files_every_run_shows():
    """A temporary file (safetensors' .tmpRANDOM, an atomic write's .NAME.RANDOM.tmp) may come and go
    between two polls of a faster run: no phase but "write" (which also fires on the file it becomes) waits
    for one."""
    events = []
    for step in range(1, 6):
        events += [
            (step, "+checkpoint/.tmp*"),
            (step + 0.1, "+checkpoint/.state.json.*.tmp"),
            (step + 0.2, "+checkpoint/state.json" if step == 1 else "~checkpoint/state.json"),
            (step + 0.3, f"+log-{step}.json"),
        ]
    reference = Observed(0, 10.0, events, False, "")
    for phase in PHASES[1:]:
        for seed in range(20):
            trigger = plan(reference, phase, random.Random(seed))
            if phase == "write":
                assert trigger.target == "checkpoint/state.json", trigger
            else:
                landmarks = {"+checkpoint/state.json"} | {f"+log-{s}.json" for s in range(1, 6)}
                assert trigger.event in landmarks, (phase, trigger)


@pytest.mark.parametrize("job, index", DEFAULT)
def test_a_killed_job_reruns_to_the_uninterrupted_result(harness, job, index):
    check(harness, job, index)


@pytest.mark.faults
@pytest.mark.parametrize(
    "job, index", [(job, i) for job, n in TRIALS.items() for i in range(n) if (job, i) not in DEFAULT]
)
def test_every_fault_trial(harness, job, index):
    check(harness, job, index)
