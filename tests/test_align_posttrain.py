import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from saelign.align import posttrain
from saelign.align.losses import ValueHead, anchor_loss, binding_loss, decorrelation_loss
from saelign.align.posttrain import GenericBatches, PostTrainConfig, post_train
from saelign.align.slots import load_slot_map
from saelign.errors import SaelignError
from saelign.sae.formats import load_sae
from saelign.sae.model import SAE, SAEConfig
from saelign.sae.sparse_ops import decode_active

D, N_ATOMS, N_CONCEPTS = 16, 48, 3


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matmuls gain nothing from threads, and on a busy machine thread hand-offs dominate their runtime."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Synthetic:
    """Generic activations = sparse sums of random atoms; concept activations add a planted concept direction."""

    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.atoms = F.normalize(torch.randn(N_ATOMS, D, generator=g), dim=1)
        self.concepts = F.normalize(torch.randn(N_CONCEPTS, D, generator=g), dim=1)
        self.g = g

    def generic(self, n: int) -> torch.Tensor:
        on = (torch.rand(n, N_ATOMS, generator=self.g) < 0.08).float()
        return (on * torch.rand(n, N_ATOMS, generator=self.g) * 2) @ self.atoms + 0.02 * torch.randn(n, D, generator=self.g)

    def concept(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(N_CONCEPTS, (n,), generator=self.g)
        return self.generic(n) + 3.0 * self.concepts[labels], labels


def pretrained_sae(activation: str, data: torch.Tensor, d_sae: int = 64, steps: int = 300) -> SAE:
    torch.manual_seed(0)
    sae = SAE(SAEConfig(d_in=D, d_sae=d_sae, activation=activation, k=6, hookpoint="model.layers.1"))
    opt = torch.optim.Adam([sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec], lr=3e-3)
    for step in range(steps):
        x = data[(step * 128) % len(data):][:128]
        z = sae.encode(x)
        loss = (sae.decode(z) - x).pow(2).mean() + 1e-3 * z.abs().sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sae.normalize_decoder()
    return sae


@pytest.fixture(scope="module")
def data():
    syn = Synthetic()
    generic = syn.generic(4096)
    train, test = syn.concept(384), syn.concept(384)
    return generic, train, test


@pytest.fixture(scope="module")
def saes(data):
    generic = data[0]
    return {act: pretrained_sae(act, generic) for act in ("relu", "topk", "jumprelu")}


def fvu(sae: SAE, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((sae(x) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


FAST = dict(steps_stage1=30, steps_stage2=250, batch_size=64, generic_batch_size=128)


@pytest.mark.parametrize("activation,binding", [("relu", "mse"), ("topk", "ce"), ("jumprelu", "mse"), ("relu", "ce")])
def test_binding_reaches_one_on_held_out_and_free_bank_keeps_reconstructing(saes, data, activation, binding):
    generic, (x_train, y_train), (x_test, y_test) = data
    sae = saes[activation]
    aligned, slot_map = post_train(sae, x_train, y_train, generic, PostTrainConfig(binding=binding, **FAST),
                                   concept_names=["a", "b", "c"])
    with torch.no_grad():
        z = aligned.encode(x_test)[:, slot_map.slots]
    assert float((z.argmax(1) == y_test).float().mean()) >= 0.97
    assert fvu(aligned, generic) <= fvu(sae, generic) * 1.2 + 0.01
    assert slot_map.concepts == ["a", "b", "c"] and slot_map.d_sae == aligned.cfg.d_sae == sae.cfg.d_sae + 3
    assert aligned.cfg.always_on_latents == slot_map.slots == [64, 65, 66]
    assert all(s > 0 for s in slot_map.scales)
    assert sae.cfg.d_sae == 64 and not sae.cfg.always_on_latents  # the input SAE is left untouched


def test_anchor_keeps_slot_encoders_near_the_probe_init(saes, data):
    generic, (x_train, y_train), (x_test, y_test) = data
    sae = saes["relu"]
    init, slots = posttrain._with_slots(sae, x_train, y_train, GenericBatches(generic, FAST["generic_batch_size"], 0).batch(0),
                                        N_CONCEPTS, "new")
    start = init.W_enc.detach()[:, slots]
    moved = {}
    for coeff in (0.0, 10.0):
        aligned, slot_map = post_train(sae, x_train, y_train, generic, PostTrainConfig(anchor_coeff=coeff, **FAST))
        assert slot_map.slots == slots
        moved[coeff] = float(anchor_loss(aligned.W_enc.detach()[:, slots], start))
        with torch.no_grad():
            z = aligned.encode(x_test)[:, slots]
        assert float((z.argmax(1) == y_test).float().mean()) >= 0.97  # binding still learnt
    assert moved[0.0] > 0.01 and moved[10.0] < 0.5 * moved[0.0]


def test_anchor_loss_is_relative_squared_distance():
    w0 = torch.tensor([[3.0, 0.0], [4.0, 2.0]])
    assert float(anchor_loss(w0, w0)) == 0.0
    moved = w0 + torch.tensor([[0.0, 1.0], [5.0, 0.0]])  # column 0: 25 / 25, column 1: 1 / 4
    assert float(anchor_loss(moved, w0)) == pytest.approx((1.0 + 0.25) / 2)


def test_topk_slots_sit_out_the_competition():
    sae = SAE(SAEConfig(d_in=4, d_sae=6, activation="topk", k=2, always_on_latents=[4, 5]))
    pre = torch.tensor([[5.0, 4.0, 3.0, -1.0, 0.5, -2.0]])
    z = sae.activate(pre)
    # top-2 runs over latents 0..3 only; slot 4 passes through ReLU although 0.5 < 3, slot 5 is clipped at 0
    assert z.tolist() == [[5.0, 4.0, 0.0, 0.0, 0.5, 0.0]]
    plain = SAE(SAEConfig(d_in=4, d_sae=6, activation="topk", k=2))
    assert plain.activate(pre).tolist() == [[5.0, 4.0, 0.0, 0.0, 0.0, 0.0]]


def test_reassign_reuses_least_used_latents_and_keeps_width(saes, data):
    generic, (x_train, y_train), (x_test, y_test) = data
    sae = saes["topk"]
    first_generic = GenericBatches(generic, FAST["generic_batch_size"], 0).batch(0)
    usage = (sae.encode(torch.cat([x_train, first_generic])) > 0).float().mean(0)
    aligned, slot_map = post_train(sae, x_train, y_train, generic, PostTrainConfig(slots="reassign", **FAST))
    assert aligned.cfg.d_sae == sae.cfg.d_sae
    assert sorted(usage[slot_map.slots].tolist()) == sorted(usage.sort().values[:3].tolist())
    with torch.no_grad():
        z = aligned.encode(x_test)[:, slot_map.slots]
    assert float((z.argmax(1) == y_test).float().mean()) >= 0.95


def test_free_bank_decoder_norms_are_kept(saes, data):
    generic, (x_train, y_train), _ = data
    sae = saes["relu"]
    aligned, slot_map = post_train(sae, x_train, y_train, generic, PostTrainConfig(**FAST))
    torch.testing.assert_close(aligned.W_dec[:64].norm(dim=1), sae.W_dec.norm(dim=1))


def test_slot_rows_carry_the_concept_difference_so_a_swap_moves_it(saes, data):
    generic, (x_train, y_train), (x_test, y_test) = data
    syn = Synthetic()
    aligned, slot_map = post_train(saes["relu"], x_train, y_train, generic, PostTrainConfig(**FAST))
    rows = aligned.W_dec[slot_map.slots] / aligned.norm_scale
    means = torch.stack([x_train[y_train == c].mean(0) for c in range(N_CONCEPTS)])
    torch.testing.assert_close(rows[1] - rows[0], means[1] - means[0], rtol=1e-4, atol=1e-4)
    # the swap a -> b (α = 1, error kept) moves concept-a activations along the planted b - a direction
    x = x_test[y_test == 0]
    with torch.no_grad():
        z = aligned.encode(x)
        z_new = z.clone()
        z_new[:, slot_map.slots[0]] = 0
        z_new[:, slot_map.slots[1]] = slot_map.scales[1]
        delta = (z_new - z) @ aligned.W_dec / aligned.norm_scale
    planted = 3.0 * (syn.concepts[1] - syn.concepts[0])
    assert float(F.cosine_similarity(delta, planted[None]).mean()) > 0.95
    assert float((delta.norm(dim=1) / planted.norm()).mean()) == pytest.approx(1.0, abs=0.25)
    learned, _ = post_train(saes["relu"], x_train, y_train, generic, PostTrainConfig(slot_decoder="learned", **FAST))
    assert not torch.allclose(learned.W_dec[slot_map.slots], aligned.W_dec[slot_map.slots])


def test_decorrelation_matches_naive_covariance():
    g = torch.Generator().manual_seed(0)
    slots, free = torch.rand(10, 3, generator=g), torch.rand(10, 5, generator=g)
    naive = 0.0
    for i in range(3):
        for j in range(5):
            a, b = slots[:, i], free[:, j]
            naive += (sum((a[n] - a.mean()) * (b[n] - b.mean()) for n in range(10)) / 10) ** 2
    torch.testing.assert_close(decorrelation_loss(slots, free), torch.as_tensor(naive, dtype=torch.float32))


def test_binding_losses():
    pre = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, 1])
    assert float(binding_loss(pre, labels, "mse")) == pytest.approx(((1.0 + 1 + 0.25) + 0) / 6)
    ce = -(torch.log_softmax(pre, -1)[0, 0] + torch.log_softmax(pre, -1)[1, 1]) / 2
    assert float(binding_loss(pre, labels, "ce")) == pytest.approx(float(ce))


def test_value_head_learns_answer_classes(saes, data):
    head = ValueHead(2, torch.tensor([7, 11, 40]), 16, torch.Generator().manual_seed(0))
    slot = torch.tensor([0.2, 1.0, 0.2, 1.0])
    concept = torch.tensor([0, 0, 1, 1])
    answers = torch.tensor([7, 11, 40, 7])
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(200):
        loss = head.loss(slot, concept, answers)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert head.classes[head(slot, concept).argmax(-1)].tolist() == answers.tolist()

    generic, (x_train, y_train), _ = data
    with pytest.raises(SaelignError, match="answer_tokens"):
        post_train(saes["relu"], x_train, y_train, generic, PostTrainConfig(value_coeff=0.5, **FAST))
    answers = 100 + y_train * 3 + (x_train[:, 0] > 0).long()
    _, slot_map = post_train(saes["relu"], x_train, y_train, generic,
                             PostTrainConfig(value_coeff=0.5, **{**FAST, "steps_stage2": 40}), answer_tokens=answers)
    assert len(slot_map.slots) == 3


def test_resume_equals_uninterrupted(saes, data, tmp_path, monkeypatch):
    generic, (x_train, y_train), _ = data
    cfg = PostTrainConfig(steps_stage1=10, steps_stage2=30, checkpoint_every=15, value_coeff=0.5,
                          batch_size=32, generic_batch_size=64)
    answers = y_train + 5
    full, _ = post_train(saes["topk"], x_train, y_train, generic, dataclasses.replace(cfg, out=str(tmp_path / "a")),
                         answer_tokens=answers)

    real, calls = posttrain.training_losses, []

    def crash_after_20(*args, **kwargs):
        calls.append(1)
        if len(calls) > 20:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(posttrain, "training_losses", crash_after_20)
    out = str(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        post_train(saes["topk"], x_train, y_train, generic, dataclasses.replace(cfg, out=out), answer_tokens=answers)
    monkeypatch.setattr(posttrain, "training_losses", real)
    resumed, slot_map = post_train(saes["topk"], x_train, y_train, generic, dataclasses.replace(cfg, out=out),
                                   answer_tokens=answers)
    for name, value in full.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=1e-6)

    loaded = load_sae(out)
    assert loaded.cfg.always_on_latents == slot_map.slots
    assert load_slot_map(out, loaded).slots == slot_map.slots
    torch.testing.assert_close(loaded.encode(x_train), resumed.encode(x_train), rtol=1e-5, atol=1e-5)
    # A finished run is loaded, not retrained; other options on the same folder are refused.
    monkeypatch.setattr(posttrain, "training_losses", None)
    again, _ = post_train(saes["topk"], x_train, y_train, generic, dataclasses.replace(cfg, out=out), answer_tokens=answers)
    torch.testing.assert_close(again.W_enc, loaded.W_enc)
    with pytest.raises(SaelignError, match=r"different options \(lr\)"):
        post_train(saes["topk"], x_train, y_train, generic, dataclasses.replace(cfg, out=out, lr=0.1), answer_tokens=answers)
    # Other concepts (names, or examples per concept) on the same folder are refused too, finished or not.
    names = [f"other_{i}" for i in range(int(y_train.max()) + 1)]
    with pytest.raises(SaelignError, match=r"different options \(concepts\)"):
        post_train(saes["topk"], x_train, y_train, generic, dataclasses.replace(cfg, out=out), names, answers)
    with pytest.raises(SaelignError, match=r"different options \(examples\)"):
        post_train(saes["topk"], x_train[1:], y_train[1:], generic, dataclasses.replace(cfg, out=out),
                   answer_tokens=answers[1:])
    # A run saved before the anchor option existed had no anchor: it loads as anchor_coeff=0, not as the default.
    state_path = tmp_path / "b" / posttrain.CHECKPOINT_DIR / "state.json"
    state = json.loads(state_path.read_text())
    assert state["options"]["anchor_coeff"] == cfg.anchor_coeff == 1.0
    del state["options"]["anchor_coeff"]
    del state["options"]["concepts"], state["options"]["examples"]  # nor concepts: they resume as before
    state_path.write_text(json.dumps(state))
    post_train(saes["topk"], x_train, y_train, generic, dataclasses.replace(cfg, out=out, anchor_coeff=0.0), answer_tokens=answers)
    with pytest.raises(SaelignError, match=r"different options \(anchor_coeff\)"):
        post_train(saes["topk"], x_train, y_train, generic, dataclasses.replace(cfg, out=out), answer_tokens=answers)


def test_generic_batches_from_an_iterable_are_read_in_order_and_restarted():
    batches = [torch.full((2, 3), float(i)) for i in range(3)]
    stream = GenericBatches(batches, 99, 0)
    assert [float(stream.batch(s)[0, 0]) for s in (0, 1, 2, 3, 4)] == [0, 1, 2, 0, 1]
    resumed = GenericBatches(batches, 99, 0)
    assert float(resumed.batch(4)[0, 0]) == 1  # skips the batches of finished steps
    exhausted = GenericBatches((b for b in batches), 99, 0)
    with pytest.raises(SaelignError, match="ran out"):
        [exhausted.batch(s) for s in range(4)]


def test_bad_inputs_give_clear_errors(saes, data):
    generic, (x_train, y_train), _ = data
    small = SAE(SAEConfig(d_in=D, d_sae=4, activation="relu"))
    with pytest.raises(SaelignError, match="3 concepts but the SAE's free bank would keep only 1 latents"):
        post_train(small, x_train, y_train, generic, PostTrainConfig(slots="reassign", **FAST))
    tiny = SAE(SAEConfig(d_in=D, d_sae=2, activation="relu"))
    with pytest.raises(SaelignError, match="free bank would keep only 2"):
        post_train(tiny, x_train, y_train, generic, PostTrainConfig(**FAST))
    with pytest.raises(SaelignError, match="binding='ce' needs at least two concepts"):
        post_train(saes["relu"], x_train, torch.zeros_like(y_train), generic, PostTrainConfig(binding="ce", **FAST),
                   concept_names=["only"])
    with pytest.raises(SaelignError, match="no examples for concept"):
        post_train(saes["relu"], x_train, y_train, generic, PostTrainConfig(**FAST), concept_names=["a", "b", "c", "d"])
    with pytest.raises(SaelignError, match=r"must be \[n, d_in=16\]"):
        post_train(saes["relu"], x_train[:, :8], y_train, generic, PostTrainConfig(**FAST))


def _slotted_sae(activation: str, d_sae: int = 512, slots: tuple[int, ...] = (0, 1, 2)) -> SAE:
    """A random SAE whose first latents are always-on concept slots, as post-training makes them."""
    torch.manual_seed(1)
    sae = SAE(SAEConfig(d_in=D, d_sae=d_sae, activation=activation, k=6, always_on_latents=list(slots)))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.3)
        if sae.threshold is not None:
            sae.threshold.fill_(0.6)  # JumpReLU: most latents below it, so z is sparse
    return sae


@pytest.mark.parametrize("activation", ["topk", "batchtopk", "relu", "jumprelu"])
def test_decode_over_active_latents_gives_the_dense_loss_and_gradients(activation):
    """Reading only z's nonzero entries is exact through each activation: where z is zero, so is its
    derivative. Forced onto the sparse path (max_density 1) even for ReLU's denser z."""
    sae = _slotted_sae(activation)
    x = torch.randn(40, D, generator=torch.Generator().manual_seed(2))

    def loss_and_grads(decode) -> tuple[torch.Tensor, list[torch.Tensor]]:
        z = sae.activate(sae.pre_acts(x))
        loss = (decode(z) + sae.b_dec - x).pow(2).sum() + 0.1 * z.abs().sum() + z[:, :3].pow(2).sum()
        params = [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec]
        return loss.detach(), list(torch.autograd.grad(loss, params))

    dense_loss, dense = loss_and_grads(lambda z: z @ sae.W_dec)
    sparse_loss, sparse = loss_and_grads(lambda z: decode_active(z, sae.W_dec, max_density=1.0))
    torch.testing.assert_close(sparse_loss, dense_loss, rtol=1e-5, atol=1e-5)
    for got, want in zip(sparse, dense, strict=True):  # summed in another order: float noise of the largest
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))
    assert any(g.abs().max() > 0 for g in dense)  # a loss that moves nothing would pass vacuously


def test_post_training_step_reads_the_decoder_sparsely_with_the_same_result(monkeypatch):
    """One stage-2 step's terms and gradients equal those of the dense products, and at top-k's density the
    sparse ones are taken: no dense decoder product and no dense encoder-weight gradient over all latents."""
    sae = _slotted_sae("topk")
    slots = [0, 1, 2]
    free_mask = torch.ones(sae.d_sae, dtype=torch.bool)
    free_mask[slots] = False
    g = torch.Generator().manual_seed(3)
    concept_x, generic = torch.randn(24, D, generator=g), torch.randn(40, D, generator=g)
    labels = torch.arange(24) % 3
    params = [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec]

    def step() -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        terms = posttrain.training_losses(sae, slots, free_mask, concept_x, labels, generic, PostTrainConfig(),
                                          stage=2, probe=sae.W_enc.detach()[:, slots] * 0.9)
        return {k: v.detach() for k, v in terms.items()}, list(torch.autograd.grad(terms["loss"], params))

    products = []
    real_matmul = torch.Tensor.__matmul__

    def counting(a, b):
        out = real_matmul(a, b)
        if b is sae.W_dec or out.shape in {(D, sae.d_sae), (sae.d_sae, D)}:  # decoding, or a weight gradient
            products.append(tuple(out.shape))
        return out

    monkeypatch.setattr(torch.Tensor, "__matmul__", counting)
    sparse_terms, sparse = step()
    assert products == []  # the decoder and the encoder's gradient read through the active latents only
    monkeypatch.setattr(posttrain, "decode_active", lambda z, W: real_matmul(z, W))
    monkeypatch.setattr(posttrain, "pre_acts_sparse_grad", lambda x, b_dec, W, b: real_matmul(x - b_dec, W) + b)
    dense_terms, dense = step()
    assert sparse_terms.keys() == dense_terms.keys() and "anchor" in dense_terms
    for key, value in dense_terms.items():
        torch.testing.assert_close(sparse_terms[key], value, rtol=1e-5, atol=1e-6)
    for got, want in zip(sparse, dense, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))
