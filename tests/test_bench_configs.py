"""Every config layer in bench/data/configs resolves over both presets into a valid SailsConfig: a renamed or
mistyped option there would otherwise surface only hours into a benchmark run."""

from __future__ import annotations

from pathlib import Path

import pytest

from saelign.configs import load_config_file
from saelign.sails.presets import preset_layer, resolve_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "bench" / "data" / "configs").glob("*.y*ml"))


def test_the_bench_config_folder_is_found():
    assert CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
@pytest.mark.parametrize("preset", ["quick", "full"])
def test_each_bench_config_resolves(path, preset):
    layer = load_config_file(str(path))
    cfg = resolve_config([preset_layer(preset), layer])
    for section, values in layer.items():
        if isinstance(values, dict):
            for key, value in values.items():
                if not isinstance(value, dict):
                    assert getattr(getattr(cfg, section), key) == value, (path.name, section, key)


@pytest.mark.parametrize("size", ["quick", "full"])
def test_the_gated_presets_are_their_bench_configs_behind_the_gate(size):
    bench_dir = CONFIGS[0].parent
    layer = load_config_file(str(bench_dir / f"sails_gate_consistency_w30_{size}_val.yaml"))
    gated = resolve_config([preset_layer(f"{size}-gated")])
    assert gated.gate.enabled and gated.sft.consistency_weight == 30 and gated.methods == ["sails"]
    # what the README's --config command resolves to, with the preset's own name and (full) SAILS alone
    want = resolve_config([preset_layer(size), layer, {"gate": {"enabled": True}, "methods": ["sails"],
                                                        "preset": f"{size}-gated"}])
    assert gated == want
