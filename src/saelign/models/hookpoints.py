"""Hookpoints are module paths on the real module tree (`model.layers.15`, globs like `model.layers.*.mlp`).

Residual stream = output of a decoder block. Capture uses plain forward hooks and can stop the forward once
every requested module has produced its output, so layers past the deepest hookpoint never run."""

import contextlib
import difflib
import fnmatch
import re
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from saelign.errors import SaelignError


class StopForward(Exception):
    """Raised inside a hook to end the forward pass early once all outputs are captured."""


def resolve_hookpoints(model: nn.Module, patterns: str | Sequence[str]) -> list[str]:
    """Expand names/globs to existing module paths in execution-independent, natural order."""
    if isinstance(patterns, str):
        patterns = [patterns]
    names = [name for name, _ in model.named_modules() if name]
    resolved: list[str] = []
    for pattern in patterns:
        # glob over dotted paths: `*` matches one segment (no dots), so `model.layers.*` means the blocks
        regex = re.compile(fnmatch.translate(pattern).replace(".*", "[^.]*"))
        hits = [n for n in names if regex.fullmatch(n)]
        if not hits:
            close = difflib.get_close_matches(pattern, names, n=5, cutoff=0.5)
            hint = f"; close matches: {', '.join(close)}" if close else f"; e.g. {', '.join(names[:3])}"
            raise SaelignError(f"unknown hookpoint {pattern!r} on {type(model).__name__}{hint}")
        resolved.extend(h for h in hits if h not in resolved)
    return resolved


def _first_tensor(output: object) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise SaelignError(f"hooked module returned {type(output).__name__}, not a tensor; choose a block or sub-module path")


@contextlib.contextmanager
def capture_outputs(model: nn.Module, hookpoints: Sequence[str], stop_early: bool = True) -> Iterator[dict[str, torch.Tensor]]:
    """Hooks that store each hookpoint's output tensor into the yielded dict (detached)."""
    modules = dict(model.named_modules())
    captured: dict[str, torch.Tensor] = {}
    wanted = set(hookpoints)

    def make_hook(name: str) -> Callable:
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            captured[name] = _first_tensor(output).detach()
            if stop_early and wanted.issubset(captured):
                raise StopForward

        return hook

    handles = [modules[name].register_forward_hook(make_hook(name)) for name in hookpoints]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


@torch.inference_mode()
def forward_capture(model: nn.Module, hookpoints: Sequence[str], input_ids: torch.Tensor,
                    attention_mask: torch.Tensor | None = None, stop_early: bool = True) -> dict[str, torch.Tensor]:
    """Run the model on a batch and return {hookpoint: [batch, seq, d]} activations."""
    with capture_outputs(model, hookpoints, stop_early=stop_early) as captured:
        try:
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except StopForward:
            pass
    missing = set(hookpoints) - set(captured)
    if missing:
        raise SaelignError(f"hookpoints {sorted(missing)} never ran in the forward pass; pick modules on the main path")
    return {name: captured[name] for name in hookpoints}


@contextlib.contextmanager
def patch_output(model: nn.Module, hookpoint: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Replace a module's output tensor with fn(output) for the duration of the block (composable by nesting)."""
    module = dict(model.named_modules()).get(hookpoint)
    if module is None:
        resolve_hookpoints(model, [hookpoint])  # raises with close matches

    def hook(_module: nn.Module, _inputs: object, output: object) -> object:
        if isinstance(output, torch.Tensor):
            return fn(output)
        first = _first_tensor(output)
        return (fn(first), *output[1:]) if isinstance(output, tuple) else [fn(first), *output[1:]]

    handle = module.register_forward_hook(hook)  # type: ignore[union-attr]
    try:
        yield
    finally:
        handle.remove()
