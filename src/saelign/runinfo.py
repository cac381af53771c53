"""run.json: what produced a run directory (config, versions, seed, timings), written atomically per stage."""

import platform
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from saelign import distributed
from saelign.errors import SaelignError
from saelign.io import read_json_object, write_json_atomic

SAELIGN_VERSION = version("saelign")  # pyproject.toml is the one place the version is written


def environment_info() -> dict[str, Any]:
    import torch
    import transformers

    info: dict[str, Any] = {
        "python": sys.version.split()[0], "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(), "torch": torch.__version__,
        "transformers": transformers.__version__, "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    try:
        import peft

        info["peft"] = peft.__version__
    except ImportError:
        pass
    return info


def read_run_record(path: Path) -> dict[str, Any]:
    """run.json's content, or a new record of this environment where there is none yet."""
    if path.exists():
        return read_json_object(path, "run.json")
    return {"saelign": SAELIGN_VERSION, "environment": environment_info(), "stages": {}}


def record_stage(run_dir: str | Path, stage: str, config: dict[str, Any], **extra: Any) -> None:
    """Merge one stage's config and results into run_dir/run.json (rank 0 writes it under torchrun)."""
    if not distributed.is_main():
        return
    if distributed.global_world_size() > 1:  # which of the job's processes made it, and how many shared it
        extra.update(processes=distributed.world_size(), rank=distributed.global_rank())
    path = Path(run_dir) / "run.json"
    data = read_run_record(path)
    if not isinstance(data.setdefault("stages", {}), dict):
        raise SaelignError(f"{path}: 'stages' must be a mapping; restore the file or remove it to start a new record")
    data["stages"][stage] = {"config": config, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra}
    write_json_atomic(path, data)
