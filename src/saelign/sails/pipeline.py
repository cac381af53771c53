"""The SAILS pipeline over one run directory: the stages of `saelign.sails.stages.STAGES`, in order.

Each unit records its key in run.json (`saelign.sails.rundir`); a rerun skips the units done under the same
key (SAE training and fine-tuning also resume mid-way). Files made under other options are an error unless
`overwrite` is set. The report is rebuilt on every run.

Layout: config.json, run.json, data/, sae/ and sae.json (naming the SAE used), labels.json, select/, targets/,
methods/<method>/{adapter/, result.json, history.json}, eval/<model>.json, effect/<method>.json,
answers/<method>.json, describe/readings.json, dashboard/, report.*."""

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from saelign import distributed
from saelign.configs import config_to_dict
from saelign.errors import SaelignError
from saelign.io import read_json_object, write_json_atomic
from saelign.progress import logger
from saelign.runinfo import record_stage
from saelign.sails.presets import SailsConfig
from saelign.sails.report import REPORT_STEM
from saelign.sails.rundir import RunDir
from saelign.sails.stages import STAGES

CONFIG_FILE = "config.json"


def stored_config(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / CONFIG_FILE
    return read_json_object(path, "run config") if path.is_file() else None


def run_pipeline(cfg: SailsConfig, run_dir: str | Path, stage_names: Sequence[str] | None = None,
                 overwrite: bool = False) -> tuple[Path, Path] | None:
    """Run the given stages (default: all) in order; return the report's paths (.md, .html) if written."""
    stage_names = list(stage_names or STAGES)
    unknown = [s for s in stage_names if s not in STAGES]
    if unknown:
        raise SaelignError(f"unknown stage(s) {', '.join(unknown)}; stages are {', '.join(STAGES)}")
    if distributed.world_size() > 1 and stage_names != ["train"]:
        raise SaelignError(f"under torchrun only the train stage runs (got {', '.join(stage_names)}): run "
                           "the stages before it in one process, then `torchrun ... -m saelign sails train "
                           "--run-dir DIR`")
    fresh = not Path(run_dir).exists()
    run = RunDir(run_dir, cfg, STAGES, overwrite)
    units = run.units(stage_names)
    run.check_stale(units)
    # The options were checked as the config was built; the inputs every stage shares are checked before
    # anything is written. Stale units (only with overwrite) are then removed up front, so a failure later
    # leaves no old result beside the new config.
    stale = [u for u in units if run.status(u) == "stale"]
    if any(run.status(u) != "done" for u in units if STAGES[u.partition(":")[0]].outputs):
        try:
            run.preflight()
        except SaelignError:
            if fresh and distributed.is_main():
                run.dir.rmdir()  # made just now, still empty
            raise
    if distributed.is_main():
        write_json_atomic(run.path(CONFIG_FILE), config_to_dict(cfg))
        for unit in stale:
            run.clear(unit)
    distributed.barrier("stale units cleared by rank 0")
    for unit in units:
        if run.status(unit) == "done":
            logger.info(f"{unit}: done earlier, skipped")
            continue
        logger.info(f"{unit}: running")
        began = time.perf_counter()
        stage, _, name = unit.partition(":")
        if STAGES[stage].outputs:
            run.begin(unit)
        extra = STAGES[stage].fn(run, name)
        seconds = round(time.perf_counter() - began, 2)
        if STAGES[stage].outputs:  # a stage without outputs (the report) is redone every time, never recorded
            record_stage(run.dir, unit, run.components(unit), key=run.key(unit), seconds=seconds, **extra)
        logger.info(f"{unit}: finished in {seconds:.0f} s")
    if "report" in stage_names:
        return run.path(f"{REPORT_STEM}.md"), run.path(f"{REPORT_STEM}.html")
    return None
