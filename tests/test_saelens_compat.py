"""SAELens loads what saelign saves and computes the same latents and reconstructions (raw activation units).

Needs the separate environment made by scripts/saelens_venv.sh (sae_lens is not a saelign dependency).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from saelign.sae.formats import save_sae
from saelign.sae.model import SAE, SAEConfig

SAELENS_PYTHON = Path(__file__).resolve().parents[1] / ".venv-saelens" / "bin" / "python"
ACTIVATIONS = ["relu", "topk", "jumprelu", "batchtopk"]

pytestmark = pytest.mark.skipif(not SAELENS_PYTHON.exists(),
                                reason="no .venv-saelens; create it with scripts/saelens_venv.sh to run the SAELens checks")

SCRIPT = """
import sys
from safetensors.torch import load_file, save_file
from sae_lens import SAE

x = load_file(sys.argv[1])["x"]
out = {}
for folder in sys.argv[3:]:
    sae = SAE.load_from_disk(folder, device="cpu")
    z = sae.encode(x)
    out[folder.rsplit("/", 1)[-1] + ".z"] = z
    out[folder.rsplit("/", 1)[-1] + ".x_hat"] = sae.decode(z)
    out[folder.rsplit("/", 1)[-1] + ".class"] = __import__("torch").tensor([ord(c) for c in type(sae).__name__])
save_file({k: v.detach().contiguous() for k, v in out.items()}, sys.argv[2])
"""


def _sae(activation: str, seed: int) -> SAE:
    torch.manual_seed(seed)
    sae = SAE(SAEConfig(d_in=24, d_sae=96, activation=activation, k=6, hookpoint="model.layers.3", model="tiny"))
    with torch.no_grad():
        sae.W_enc.mul_(1.7)
        sae.b_enc.normal_(0, 0.3)
        sae.b_dec.normal_(0, 1.0)
        sae.norm_scale.fill_(0.23)  # SAELens only sees raw units: the scale must be folded in correctly
        if sae.threshold is not None:
            sae.threshold.uniform_(0.05, 0.8)
    return sae


def test_saelens_loads_our_saes_with_identical_outputs(tmp_path):
    saes = {act: _sae(act, seed) for seed, act in enumerate(ACTIVATIONS)}
    for act, sae in saes.items():
        save_sae(sae, tmp_path / act)
    x = torch.randn(50, 24, generator=torch.Generator().manual_seed(7)) * 4 + 2
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    result = subprocess.run([str(SAELENS_PYTHON), "-c", SCRIPT, str(tmp_path / "x.safetensors"),
                             str(tmp_path / "out.safetensors"), *(str(tmp_path / a) for a in ACTIVATIONS)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = load_file(str(tmp_path / "out.safetensors"))
    expected_class = {"relu": "StandardSAE", "topk": "TopKSAE", "jumprelu": "JumpReLUSAE", "batchtopk": "JumpReLUSAE"}
    for act, sae in saes.items():
        assert "".join(map(chr, out[f"{act}.class"].tolist())) == expected_class[act]
        with torch.no_grad():
            z, x_hat = sae.encode(x), sae(x)
        assert torch.equal(out[f"{act}.z"] != 0, z != 0), act
        for theirs, ours in ((out[f"{act}.z"], z), (out[f"{act}.x_hat"], x_hat)):
            error = (theirs - ours).abs().max().item()
            assert error <= 1e-5 * max(1.0, ours.abs().max().item()), f"{act}: max error {error}"
