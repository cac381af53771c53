import argparse
from dataclasses import dataclass, field
from typing import Literal

import pytest

from saelign.configs import (
    add_config_args,
    config_from_args,
    config_from_dict,
    config_to_dict,
    help_field,
    load_config_file,
)
from saelign.errors import SaelignError


@dataclass
class DemoConfig:
    k: int = help_field(32, "active latents")
    lr: float = help_field(1e-3, "learning rate")
    name: str = help_field("x", "a name")
    layers: list[str] = help_field(["a"], "hookpoints")
    mode: Literal["fast", "slow"] = help_field("fast", "mode")
    flag: bool = help_field(False, "a switch")
    cap: int | None = help_field(None, "optional cap")


def parse(argv, file_data=None):
    parser = argparse.ArgumentParser()
    add_config_args(parser, DemoConfig)
    return config_from_args(DemoConfig, parser.parse_args(argv), file_data)


def test_defaults_file_then_flags_precedence():
    cfg = parse(["--k", "16", "--layers", "x,y", "--flag"], {"k": 8, "lr": 0.5, "mode": "slow"})
    assert cfg.k == 16 and cfg.lr == 0.5 and cfg.mode == "slow" and cfg.flag is True
    assert cfg.layers == ["x", "y"] and cfg.cap is None and cfg.name == "x"


def test_list_defaults_are_not_shared():
    a, b = DemoConfig(), DemoConfig()
    a.layers.append("z")
    assert b.layers == ["a"]


@pytest.mark.parametrize(
    "data, needle",
    [({"kk": 1}, "unknown option(s) kk"), ({"k": "abc"}, "expected int"), ({"k": 1.5}, "expected an integer"),
     ({"mode": "medium"}, "not one of fast, slow"), ({"flag": "maybe"}, "true/false"), ({"k": None}, "null is not allowed")],
)
def test_bad_values_name_the_field(data, needle):
    with pytest.raises(SaelignError, match="config") as info:
        config_from_dict(DemoConfig, data)
    assert needle in str(info.value)


def test_round_trip_through_dict_and_yaml(tmp_path):
    cfg = DemoConfig(k=4, layers=["p", "q"], cap=3)
    path = tmp_path / "c.yaml"
    import yaml

    path.write_text(yaml.safe_dump(config_to_dict(cfg)))
    assert config_from_dict(DemoConfig, load_config_file(path)) == cfg


def test_unparseable_file_names_the_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(SaelignError, match="bad.json"):
        load_config_file(path)


@dataclass
class OuterConfig:
    steps: int = help_field(1, "steps")
    demo: DemoConfig = field(default_factory=DemoConfig, metadata={"hide": {"name": "set by the outer config"}})


def test_a_nested_config_hides_the_fields_its_owner_sets():
    cfg = config_from_dict(OuterConfig, {"demo": {"k": 3}})
    assert cfg.demo.k == 3 and "name" not in config_to_dict(cfg)["demo"] and config_to_dict(cfg)["demo"]["k"] == 3
    assert config_from_dict(OuterConfig, config_to_dict(cfg)) == cfg  # config.json round-trips
    with pytest.raises(SaelignError, match=r"config.demo.name is not an option here: set by the outer config"):
        config_from_dict(OuterConfig, {"demo": {"name": "y"}})
    parser = argparse.ArgumentParser()
    add_config_args(parser, DemoConfig, "demo-", hidden={"name": "set by the outer config"})
    assert "--demo-k" in parser.format_help() and "--demo-name" not in parser.format_help()
