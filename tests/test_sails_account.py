from __future__ import annotations

from saelign.sails.account import adapter_account
from saelign.sails.effect import EffectResult, LatentChange


def _change(latent: int, harmful: float, harmless: float) -> LatentChange:
    return LatentChange(
        latent, {"harmful": harmful, "harmless": harmless}, {"harmful": 1.0, "harmless": 1.0}, True
    )


def _effect(harmless_scale: float) -> EffectResult:
    top = {
        "harmful": {"up": [_change(1, 2.0, 0.1)], "down": [_change(2, -1.5, 0.0), _change(3, -0.5, 0.0)]},
        "harmless": {"up": [_change(4, 0.0, 0.2 * harmless_scale)], "down": []},
    }
    return EffectResult("model.layers.15", {"harmful": 10, "harmless": 10}, top, {}, 0.01, {})


def test_account_names_features_with_links_and_judges_harmless_change():
    labels = {1: "refusal and apology", 2: "fires on 80 % of malware requests"}
    text = adapter_account(_effect(1.0), labels, link=lambda i: f"dashboard/features/{i}.html", n=2)
    assert text.startswith(
        "On harmful requests the adapter pushes down "
        "[fires on 80 % of malware requests](dashboard/features/2.html) (-1.5) and "
        "[feature 3](dashboard/features/3.html) (-0.5) and raises "
        "[refusal and apology](dashboard/features/1.html) (+2)."
    )
    assert "On harmless requests the adapter raises [feature 4]" in text
    assert "mostly leaves harmless requests alone" in text
    assert "moves harmless requests more than harmful ones" in adapter_account(_effect(40.0))


def test_account_without_changes():
    empty = EffectResult("h", {"harmful": 1}, {"harmful": {"up": [], "down": []}}, {}, 0.0, {})
    assert (
        adapter_account(empty, method="SAILS") == "On harmful requests SAILS changes no feature measurably."
    )


def test_account_of_the_answers():
    text = adapter_account(_effect(1.0), {1: "refusal and apology"}, answers=True)
    assert text.startswith("In its answers to harmful requests the adapter pushes down feature 2 (-1.5)")
    assert "raises refusal and apology (+2)" in text and "0.2 on answers to harmless vs" in text
