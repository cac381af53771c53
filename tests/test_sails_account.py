from saelign.report import Report
from saelign.sails.account import account_text, adapter_account
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
    labels = {1: "refusal and apology", 2: "fires on 80 % of malware requests [x]"}
    parts = adapter_account(_effect(1.0), labels, link=lambda i: f"dashboard/features/{i}.html", n=2)
    md = Report("r").paragraph(*parts).to_markdown()
    assert (
        "On harmful requests the adapter pushes down "
        "[fires on 80 % of malware requests \\[x\\]](dashboard/features/2.html) (-1.5) and "
        "[feature 3](dashboard/features/3.html) (-0.5), and raises "
        "[refusal and apology](dashboard/features/1.html) (+2)." in md
    )
    page = Report("r").paragraph(*parts).to_html()
    assert '<a href="dashboard/features/1.html">refusal and apology</a> (+2)' in page
    text = account_text(parts)
    assert "On harmless requests the adapter raises feature 4 (+0.2)." in text
    assert "mostly leaves harmless requests alone" in text
    assert "moves harmless requests more than harmful ones" in account_text(adapter_account(_effect(40.0)))


def test_account_lists_three_mentions_with_commas():
    top = {"harmful": {"up": [], "down": [_change(i, -1.0 * i, 0.0) for i in (1, 2, 3)]}}
    effect = EffectResult("h", {"harmful": 1}, top, {}, 0.0, {})
    text = account_text(adapter_account(effect))
    assert (
        text
        == "On harmful requests the adapter pushes down feature 1 (-1), feature 2 (-2) and feature 3 (-3)."
    )


def test_account_without_changes():
    empty = EffectResult("h", {"harmful": 1}, {"harmful": {"up": [], "down": []}}, {}, 0.0, {})
    assert account_text(adapter_account(empty, method="SAILS")) == (
        "On harmful requests SAILS changes no feature measurably."
    )
    still = {kind: {"up": [], "down": []} for kind in ("harmful", "harmless")}
    text = account_text(adapter_account(EffectResult("h", {}, still, {}, 0.0, {}), answers=True))
    assert text == (
        "In its answers to harmful requests the adapter changes no feature measurably. "
        "In its answers to harmless requests the adapter changes no feature measurably."
    )


def test_account_tells_only_the_kinds_asked_for():
    text = account_text(adapter_account(_effect(1.0), n=1, kinds=("harmless",)))
    assert text == "On harmless requests the adapter raises feature 4 (+0.2)."


def test_account_of_the_answers():
    text = account_text(adapter_account(_effect(1.0), {1: "refusal and apology"}, answers=True))
    assert text.startswith("In its answers to harmful requests the adapter pushes down feature 2 (-1.5)")
    assert "raises refusal and apology (+2)" in text and "0.2 on answers to harmless vs" in text
