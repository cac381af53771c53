"""No unsafe deserialisation anywhere in the package: no pickle (or its relatives), torch.load only with
weights_only=True, yaml.load only with a safe loader, numpy.load without allow_pickle, and no eval/exec.

The scan reads the syntax tree of every module under src/, so a comment or a string mentioning these names
does not count, and an alias (`import pickle as p`, `from torch import load`) does."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "saelign"
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "shelve", "marshal", "joblib", "cloudpickle"}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"}


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _dotted(node: ast.AST) -> str:
    """`a.b.c` for attribute chains and names, '' for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and (base := _dotted(node.value)):
        return f"{base}.{node.attr}"
    return ""


def unsafe_uses(source: str, filename: str = "<string>") -> list[str]:
    """One line per unsafe use in `source`: 'file:line: what'."""
    tree = ast.parse(source, filename)
    aliases: dict[str, str] = {}  # local name -> what it stands for (torch.load, yaml, numpy.load, ...)
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                aliases[alias.asname or alias.name.split(".")[0]] = (
                    alias.name if alias.asname else alias.name.split(".")[0]
                )
                if alias.name.split(".")[0] in UNSAFE_MODULES:
                    found.append(f"{filename}:{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in UNSAFE_MODULES:
                found.append(f"{filename}:{node.lineno}: from {node.module} import ...")
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        head, _, rest = name.partition(".")
        full = f"{aliases.get(head, head)}.{rest}" if rest else aliases.get(head, head)
        where = f"{filename}:{node.lineno}"
        if full in ("eval", "exec", "builtins.eval", "builtins.exec"):
            found.append(f"{where}: {full}()")
        elif full == "torch.load" and not _is_true(_keyword(node, "weights_only")):
            found.append(f"{where}: torch.load without weights_only=True")
        elif full in ("yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all", "yaml.full_load_all"):
            found.append(f"{where}: {full}")
        elif full in ("yaml.load", "yaml.load_all"):
            loader = _keyword(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            if loader is None or _dotted(loader).rsplit(".", 1)[-1] not in SAFE_YAML_LOADERS:
                found.append(f"{where}: {full} without a safe Loader")
        elif full in ("numpy.load", "np.load") and _is_true(_keyword(node, "allow_pickle")):
            found.append(f"{where}: numpy.load with allow_pickle=True")
        elif full.endswith("read_pickle"):
            found.append(f"{where}: {full}")
    return found


def test_the_package_has_no_unsafe_deserialisation():
    modules = sorted(SRC.rglob("*.py"))
    assert len(modules) > 50  # the scan found the package
    found = [line for path in modules for line in unsafe_uses(path.read_text(encoding="utf-8"), str(path))]
    assert not found, "unsafe deserialisation:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "source",
    [
        "import pickle\npickle.loads(b'')",
        "from pickle import loads",
        "import dill as d",
        "import torch\ntorch.load('x.pt')",
        "import torch\ntorch.load('x.pt', weights_only=False)",
        "from torch import load\nload('x.pt')",
        "import torch as T\nT.load('x.pt', map_location='cpu')",
        "import yaml\nyaml.load(open('c.yaml'))",
        "import yaml\nyaml.load(text, Loader=yaml.FullLoader)",
        "import yaml\nyaml.unsafe_load(text)",
        "import numpy as np\nnp.load('a.npy', allow_pickle=True)",
        "eval(open('f').read())",
        "exec(text)",
    ],
)
def test_the_scan_catches_each_kind(source):
    assert unsafe_uses(source), source


@pytest.mark.parametrize(
    "source",
    [
        "import torch\ntorch.load('x.pt', map_location='cpu', weights_only=True)",
        "import yaml\nyaml.safe_load(text)",
        "import yaml\nyaml.load(text, Loader=yaml.SafeLoader)",
        "model.eval()",
        "import numpy as np\nnp.load('a.npy')",
        "# import pickle is mentioned in a comment\nx = 'pickle.loads'",
    ],
)
def test_the_scan_passes_safe_code(source):
    assert not unsafe_uses(source), source
