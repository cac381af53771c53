"""The public verbs: every name a package lists in `__all__` is importable from it and is the library's own
object (not a copy), so the README's short imports reach the real functions."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize("package", ["saelign", "saelign.align", "saelign.sae", "saelign.datasets"])
def test_all_names_resolve(package):
    module = importlib.import_module(package)
    assert len(set(module.__all__)) == len(module.__all__)
    for name in module.__all__:
        assert hasattr(module, name), name


def test_align_exports_its_verbs():
    import saelign
    import saelign.align as align
    from saelign.align import metrics, pipeline, posttrain

    assert align.train_aligned is pipeline.train_aligned and align.post_train is posttrain.post_train
    assert align.swap_success is metrics.swap_success
    assert issubclass(align.AlignEvalConfig, align.MetricsConfig)
    for verb in ("build_ontology", "evaluate_aligned", "swap_generate", "guarded_generate", "SlotGuard"):
        assert verb in align.__all__
    assert saelign.train_from_store.__module__ == "saelign.sae.pipeline"
