"""SAE activation plug-ins: the registry, each encode against plain torch, options, and a toy activation that
works everywhere once registered."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F

from saelign.cli import build_parser
from saelign.cli.sae_train import _train_config
from saelign.configs import help_field
from saelign.errors import SaelignError
from saelign.sae import SAE, SAEConfig, load_sae, save_sae
from saelign.sae.activations import ACTIVATIONS, DenseActivation, activation_class, register
from saelign.sae.activations.base import full_options
from saelign.sae.train import SAETrainConfig, train_saes


def make(activation: str, k: int = 3, d_sae: int = 24) -> SAE:
    sae = SAE(SAEConfig(d_in=8, d_sae=d_sae, activation=activation, k=k))
    sae.reset_parameters(seed=0)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.3, generator=torch.Generator().manual_seed(1))
        if sae.threshold is not None:
            sae.threshold.copy_(torch.linspace(0.0, 0.8, d_sae))
    return sae


def test_registry_lists_the_four_activations_with_their_saelens_names():
    assert {"relu", "topk", "batchtopk", "jumprelu"} <= ACTIVATIONS.keys()
    names = {name: (c.architecture, c.uses_k, c.uses_threshold, c.sparse) for name, c in ACTIVATIONS.items()}
    assert names["relu"] == ("standard", False, False, False)
    assert names["topk"] == ("topk", True, False, True)
    assert names["batchtopk"] == ("jumprelu", True, True, True)
    assert names["jumprelu"] == ("jumprelu", False, True, False)
    with pytest.raises(SaelignError, match="unknown SAE activation 'gated'.*topk"):
        activation_class("gated")
    with pytest.raises(SaelignError, match="unknown SAE activation"):
        SAE(SAEConfig(activation="gated"))


def test_each_encode_matches_plain_torch():
    x = torch.randn(40, 8, generator=torch.Generator().manual_seed(2)) * 2
    for name in ("relu", "topk", "batchtopk", "jumprelu"):
        sae = make(name)
        pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
        if name == "relu":
            expected = torch.relu(pre)
        elif name == "topk":
            top = torch.topk(pre, 3, dim=-1)
            expected = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
        else:  # jumprelu, and batchtopk at inference: one threshold per latent
            expected = torch.where(pre > torch.linspace(0.0, 0.8, 24), pre, torch.zeros(()))
        torch.testing.assert_close(sae.encode(x), expected, msg=name)
    # BatchTopK in training: the 3 * 40 largest ReLU'd pre-activations of the whole batch
    sae = make("batchtopk")
    pre = sae.pre_acts(x)
    winners = torch.relu(pre).flatten().topk(3 * 40).indices
    expected = torch.zeros(40 * 24).index_copy(0, winners, torch.relu(pre).flatten()[winners]).view(40, 24)
    torch.testing.assert_close(sae.activate(pre, training=True), expected)


def test_options_fill_defaults_convert_values_and_refuse_unknown_names():
    options = SAETrainConfig(activation_options={"l1_coefficient": "0.5", "jumprelu_penalty": "tanh"})
    options = options.activation_options
    assert options["l1_coefficient"] == 0.5 and options["jumprelu_penalty"] == "tanh"
    assert options["auxk_alpha"] == 1 / 32 and options["batchtopk_threshold_beta"] == 0.9
    batchtopk = activation_class("batchtopk").from_options({"auxk_alpha": 0.2, "l1_coefficient": 9})
    assert batchtopk.auxk_alpha == 0.2
    with pytest.raises(SaelignError, match="unknown option.*l2_coefficient.*valid options: auxk_alpha"):
        SAETrainConfig(activation_options={"l2_coefficient": 1.0})
    with pytest.raises(SaelignError, match="jumprelu_penalty"):
        full_options({"jumprelu_penalty": "l1"})
    with pytest.raises(SaelignError, match="batchtopk_threshold_beta must lie in"):
        full_options({"batchtopk_threshold_beta": 1.0})


def test_cli_flags_and_config_file_keys_reach_the_activation_options(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  total_tokens: 100\n  jumprelu_bandwidth: 0.2\n  l1_coefficient: 4\n")
    args = build_parser().parse_args(["sae", "train", "--config", str(config), "--l1-coefficient", "0.7",
                                      "--auxk-alpha", "0.1", "--out", "x"])
    tcfg = _train_config(args)
    assert tcfg.total_tokens == 100 and tcfg.out == "x"
    assert (tcfg.activation_options["l1_coefficient"], tcfg.activation_options["jumprelu_bandwidth"],
            tcfg.activation_options["auxk_alpha"]) == (0.7, 0.2, 0.1)


@dataclass
class ShiftedReLU(DenseActivation):
    """A toy: relu(pre - toy_shift) with an L1 penalty, defined outside the package."""

    name: ClassVar[str] = "toy_shifted_relu"
    architecture: ClassVar[str] = "standard"
    loads_architecture: ClassVar[bool] = False

    toy_shift: float = help_field(0.0, "toy: shift subtracted before the ReLU")
    toy_l1: float = help_field(1.0, "toy: L1 weight")
    toy_groups: list[int] = help_field([4, 12], "toy: a list option, unused")

    @property
    def coefficient(self) -> float:
        return self.toy_l1

    def sparsify(self, pre, sae, training=False):
        return F.relu(pre - self.toy_shift)

    def latents(self, pre, sae):
        z = F.relu(pre - self.toy_shift)
        return z, (z > 0).float().sum(0), z.sum() / pre.shape[0]


@pytest.fixture
def toy():
    register(ShiftedReLU)
    yield ShiftedReLU
    del ACTIVATIONS[ShiftedReLU.name]


def test_a_registered_toy_activation_trains_saves_loads_and_gets_flags(toy, tmp_path):
    g = torch.Generator().manual_seed(3)
    x = F.relu(torch.randn(2000, 8, generator=g)) @ torch.randn(8, 8, generator=g)
    cfg = SAETrainConfig(total_tokens=2000, batch_size=200, lr=0.01, log_every_steps=2,
                         out=str(tmp_path / "run"), activation_options={"toy_shift": 0.05, "toy_l1": 0.1})
    batches = [x[i:i + 200] for i in range(0, 2000, 200)]
    sae, = train_saes(batches, [SAEConfig(d_in=8, d_sae=16, activation=toy.name)], cfg)
    entries = json.loads((tmp_path / "run" / "train_log.json").read_text())["entries"]
    assert entries[-1]["fvu"] < entries[0]["fvu"] and entries[-1]["aux"] > 0
    run = json.loads((tmp_path / "run" / "run.json").read_text())["stages"]["sae_train"]
    assert run["config"]["train"]["activation_options"]["toy_shift"] == 0.05
    loaded = load_sae(save_sae(sae, tmp_path / "copy"))
    assert loaded.cfg.activation == toy.name and json.loads((tmp_path / "copy" / "cfg.json").read_text())[
        "architecture"] == "standard"
    torch.testing.assert_close(loaded.encode(x[:20]), F.relu(loaded.pre_acts(x[:20])))  # default shift: 0
    args = build_parser().parse_args(["sae", "train", "--activation", toy.name, "--toy-shift", "0.3",
                                      "--toy-groups", "2,6", "--out", "y"])
    options = _train_config(args).activation_options
    assert (options["toy_shift"], options["toy_groups"]) == (0.3, [2, 6])
    assert cfg.activation_options["toy_groups"] == [4, 12]


def test_an_option_name_shared_with_another_default_is_refused():
    @dataclass
    class Clash(ShiftedReLU):
        name: ClassVar[str] = "clash"
        sparsity_warmup_fraction: float = 0.5  # relu's and jumprelu's default is 0.05

    with pytest.raises(SaelignError, match="sparsity_warmup_fraction"):
        register(Clash)
    assert "clash" not in ACTIVATIONS
