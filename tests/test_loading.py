import pytest
import torch

from conftest import make_tiny_model
from saelign.device import resolve_device, resolve_dtype
from saelign.errors import SaelignError
from saelign.models import ModelConfig, load_model
from saelign.models.loading import cache_dir, convert_gguf, default_gguf_path
from saelign.sails.lora_init import prepare_full_finetune


def test_local_folder_loads_fp32_on_cpu_with_pad_token(tiny_llama_dir, tiny_llama):
    model, tokenizer = load_model(ModelConfig(model=str(tiny_llama_dir)))
    assert next(model.parameters()).dtype == torch.float32 and not model.training
    assert tokenizer.pad_token is not None
    ids = torch.randint(5, 100, (1, 5))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, tiny_llama(input_ids=ids).logits)


@pytest.mark.parametrize("model, needle", [("/no/such/model", "not found"), (__file__, "not a .gguf file")])
def test_bad_model_paths(model, needle):
    with pytest.raises(SaelignError, match=needle):
        load_model(ModelConfig(model=model))


def test_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(SaelignError, match="no config.json"):
        load_model(ModelConfig(model=str(tmp_path)))


@pytest.mark.parametrize("quantize", ["8bit", "4bit"])
def test_quantized_loading_is_refused_on_cpu_naming_the_flag(tiny_llama_dir, quantize):
    with pytest.raises(SaelignError, match=f"--quantize {quantize} .*needs a CUDA GPU.*device is cpu"):
        load_model(ModelConfig(model=str(tiny_llama_dir), device="cpu", quantize=quantize))
    with pytest.raises(SaelignError, match="quantize must be one of none, 8bit, 4bit"):
        ModelConfig(quantize="3bit")


def test_full_fine_tuning_refuses_a_quantized_model(tokenizer):
    model = make_tiny_model("llama", len(tokenizer))
    model.hf_quantizer = object()  # what a bitsandbytes load sets (it needs a GPU); prepare reads only that
    with pytest.raises(SaelignError, match="method full .* --quantize"):
        prepare_full_finetune(model)


def test_dtype_policy():
    cpu = resolve_device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    with pytest.raises(SaelignError, match="unknown dtype"):
        resolve_dtype("fp8", cpu)


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SAELIGN_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path


@pytest.mark.slow
def test_default_gguf_converts_once_and_generates_english(tmp_path, monkeypatch):
    monkeypatch.setenv("SAELIGN_CACHE", str(tmp_path))
    folder = convert_gguf(default_gguf_path())
    assert (folder / "config.json").is_file() and convert_gguf(default_gguf_path()) == folder
    model, tokenizer = load_model(ModelConfig())
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert not hasattr(model.config, "quantization_config")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids["input_ids"].shape[1]:])


@pytest.mark.slow
def test_two_processes_converting_at_once_both_get_the_folder(tmp_path):
    """Parallel jobs on a cold cache: each converts in its own partial folder; the later keeps the first's."""
    import os
    import subprocess
    import sys

    code = ("from saelign.models.loading import convert_gguf, default_gguf_path\n"
            "print(convert_gguf(default_gguf_path()))")
    env = {**os.environ, "SAELIGN_CACHE": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0] and outputs[0] == outputs[1]
    models = tmp_path / "models"
    assert [f.name for f in models.iterdir()] == [os.path.basename(outputs[0])]  # no partial folder left
    assert (models / os.path.basename(outputs[0]) / "model.safetensors").is_file()
