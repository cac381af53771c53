"""SAILS: safety data, feature selection, a safety subspace, LoRA inside it, fine-tuning, evaluation, report.
The whole pipeline is `run_pipeline(resolve_config([preset_layer("quick")]), "runs/sails")`; each verb below
is one step of it and runs on its own."""

from saelign.sails.adapters import load_adapter, save_adapter
from saelign.sails.data import SafetyDataConfig, build_safety_data
from saelign.sails.evaluate import SafetyEvalConfig, evaluate_model
from saelign.sails.gate import GateConfig, fit_gate, gated_answers, load_gate
from saelign.sails.lora_init import LoraInitConfig, make_peft_model
from saelign.sails.pipeline import run_pipeline
from saelign.sails.presets import PRESETS, SailsConfig, preset_layer, resolve_config
from saelign.sails.select import FeatureSelectConfig, select_safety_features, selection_directions
from saelign.sails.sft import SFTConfig, train_sft
from saelign.sails.subspace import build_subspace

__all__ = ["PRESETS", "FeatureSelectConfig", "GateConfig", "LoraInitConfig", "SFTConfig", "SafetyDataConfig",
           "SafetyEvalConfig", "SailsConfig", "build_safety_data", "build_subspace", "evaluate_model", "fit_gate",
           "gated_answers", "load_adapter", "load_gate",
           "make_peft_model", "preset_layer", "resolve_config", "run_pipeline", "save_adapter",
           "select_safety_features", "selection_directions", "train_sft"]
