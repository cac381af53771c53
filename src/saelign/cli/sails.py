"""`saelign sails run|<stage>`: the SAILS pipeline and its stages (one subcommand per `STAGES` declaration).

Every subcommand takes the same options; a stage subcommand works on an existing run directory (--run) and
starts from the config stored there, so `saelign sails train --run DIR --sft-steps 80` changes one option."""

import argparse
import math
import textwrap
from pathlib import Path
from typing import Any

from saelign.configs import add_config_args, flags_from_args, load_config_file, source_label
from saelign.errors import SaelignError
from saelign.io import read_json
from saelign.sails.gate import SUFFIX as GATED
from saelign.sails.pipeline import run_pipeline, stored_config
from saelign.sails.presets import DEFAULT_PRESET, PRESETS, SailsConfig, preset_layer, resolve_config
from saelign.sails.rundir import RunDir
from saelign.sails.stages import STAGES


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "sails", help="SAILS: safety fine-tuning inside an SAE-derived subspace, with baselines and a report",
        description=f"The SAILS pipeline: {' -> '.join(STAGES)}.")
    group = parser.add_subparsers(dest="sails_command", metavar="SUBCOMMAND", required=True)
    run = group.add_parser("run", help="run every stage (resumable; finished stages are skipped)",
                           description="Run the whole pipeline into --out. Rerun the same command to resume. "
                           "Options come from the preset < --config FILE (sections data:, sae:, sft:, ...) < flags.")
    _add_options(run, stage="run")
    for stage in STAGES.values():
        _add_options(group.add_parser(stage.name, help=stage.help, description=stage.help), stage=stage.name)


def _preset_epilog() -> str:
    """The values each preset sets over the defaults shown with the flags."""
    def flat(values: dict[str, Any], prefix: str = "") -> list[str]:
        return [item for key, value in values.items()
                for item in (flat(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}={value}"])]
    lines = [f"{name}: methods={','.join(values['methods'])} "
             + " ".join(flat({k: v for k, v in values.items() if k != "methods"})) for name, values in PRESETS.items()]
    return (f"presets: the defaults shown above are those of the default preset, {DEFAULT_PRESET}; each preset "
            "sets these values over the options' own defaults:\n") + "\n".join(
        textwrap.fill(line, 100, initial_indent="  ", subsequent_indent="      ") for line in lines)


def _add_options(parser: argparse.ArgumentParser, stage: str) -> None:
    # Under torchrun only adapter training is shared by the ranks; the other stages run in one process.
    parser.set_defaults(func=run, stage=stage, data_parallel=stage == "train")
    parser.allow_abbrev = False  # a hidden option (--lora-init) must not pass for another (--lora-init-scale)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _preset_epilog()
    if stage == "run":
        parser.add_argument("--out", dest="run_dir", default="runs/sails", metavar="DIR",
                            help="run directory (default: runs/sails)")
    else:
        # --run-dir also: torchrun's own parser reads a later `--run` as an abbreviation of its --run-path
        parser.add_argument("--run", "--run-dir", dest="run_dir", required=True, metavar="DIR",
                            help="run directory made by `saelign sails run`")
    parser.add_argument("--config", metavar="FILE",
                        help="YAML/JSON file of options in the sections below (flags override it)")
    parser.add_argument("--sae", dest="sae_path", metavar="PATH",
                        help="use this SAE (saelign/SAELens/sparsify/dictionary_learning folder) instead of training one")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo stages whose files were made with other options (never done silently)")
    add_config_args(parser, SailsConfig, shown=preset_layer(DEFAULT_PRESET))


def resolve_from_args(args: argparse.Namespace) -> SailsConfig:
    """Preset (or the run directory's stored config) < --config file < flags."""
    file_data = load_config_file(args.config) if args.config else {}
    flags = flags_from_args(SailsConfig, args)
    label = source_label(SailsConfig, flags, args.config, file_data)
    stored = stored_config(args.run_dir)
    preset = flags.get("preset") or file_data.get("preset")
    if preset:
        preset_layer(str(preset))  # an unknown name is refused before it is compared with the run's
    if stored is not None:
        if preset and preset != stored.get("preset"):
            raise SaelignError(f"{args.run_dir} is a {stored.get('preset')!r} run; use another --out for preset {preset!r}")
        base = stored
    elif args.stage not in ("run", next(iter(STAGES))):
        raise SaelignError(f"{args.run_dir} has no {Path(args.run_dir) / 'config.json'}; start it with "
                           f"`saelign sails run` or `saelign sails {next(iter(STAGES))}`")
    else:
        base = preset_layer(preset or DEFAULT_PRESET)
    return resolve_config([base, file_data, flags], label)


def _summary(run_dir: str, cfg: SailsConfig) -> list[str]:
    """One line per evaluation made under the run's current options (as the report shows them)."""
    run, lines = RunDir(run_dir, cfg, STAGES), []
    units = [(f"eval:{name}", name) for name in ["base", *cfg.methods]]
    units += [(f"gated:{name}", f"{name}{GATED}") for name in cfg.methods if cfg.gate.enabled]
    for unit, name in units:
        if run.complete(unit):
            m = read_json(run.path("eval", f"{name}.json"))
            ppl = m.get("perplexity")
            line = f"  {name:16s} safety {100 * m['safety_rate']:5.1f} %   over-refusal {100 * m['over_refusal']:5.1f} %"
            lines.append(line + ("" if ppl is None or math.isnan(ppl) else f"   perplexity {ppl:.2f}"))
    return lines


def run(args: argparse.Namespace) -> int:
    cfg = resolve_from_args(args)
    stages = list(STAGES) if args.stage == "run" else [args.stage]
    written = run_pipeline(cfg, args.run_dir, stages, overwrite=args.overwrite)
    if written:
        print("\n".join(_summary(args.run_dir, cfg)))
        print(f"report: {written[1]}\nmarkdown: {written[0]}")
        if (dashboard := Path(args.run_dir) / "dashboard" / "index.html").is_file():
            print(f"dashboard: {dashboard}")
    else:
        print(f"{args.stage}: done in {args.run_dir}")
    return 0
