"""Detection scoring of labels: given a label, can a reader tell where the latent fires?

For each latent an equal number of held-out firing and non-firing prompts (none of them shown to the
explainer) is given to a detector together with the label; the detector scores each prompt and the score is
the balanced accuracy of "fires" predictions (delphi's detection score). The decision threshold is the median
score over the balanced set, so a detector that always answers the same (small chat models lean to "Yes")
scores exactly 0.5 instead of looking good on one class; it does not need to be calibrated, only to rank.

Detectors: `LikelihoodDetector` (the default) measures how much the label raises a local model's likelihood of
the prompt; `ChatDetector` asks a chat model ("Yes"/"No" next-token logits, one forward per prompt, no
generation); `EmbeddingDetector` (`label.embedding`) takes the cosine similarity of sentence embeddings;
`KeywordDetector` is a deterministic word-overlap scorer that checks the maths on constructed cases.
`make_detector` is the one place a detector's name becomes a detector."""

import copy
import math
import random
import re
from collections.abc import Mapping, Sequence
from typing import Literal, Protocol, get_args

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from saelign.errors import SaelignError
from saelign.label.embedding import DEFAULT_EMBEDDER, EmbeddingDetector, load_embedder
from saelign.label.reading import Reading
from saelign.progress import logger
from saelign.text import pad, pad_token_id

DETECT_PROMPT = ("A feature of a language model is described as: \"{label}\".\n\nRequest: \"{text}\"\n\n"
                 "Does this feature fire on this request? Answer Yes or No.")
_WORD = re.compile(r"[a-z][a-z'-]{2,}")
_STOP = {"the", "and", "for", "with", "that", "this", "fires", "requests", "request", "mean", "from", "about",
         "of", "on", "vs", "are", "how", "what", "into", "harmful", "harmless"}
DetectorName = Literal["likelihood", "chat", "embedding"]
DETECTORS: tuple[str, ...] = get_args(DetectorName)


class Detector(Protocol):
    def scores(self, label: str, texts: Sequence[str]) -> list[float]:
        """Higher = more likely that the labelled feature fires on the text."""
        ...


class KeywordDetector:
    """Share of the label's content words that occur in the text."""

    def scores(self, label: str, texts: Sequence[str]) -> list[float]:
        words = set(_WORD.findall(label.lower())) - _STOP
        if not words:
            return [0.0] * len(texts)
        return [len(words & set(_WORD.findall(t.lower()))) / len(words) for t in texts]


def check_chat_model(tokenizer: PreTrainedTokenizerBase, option: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise SaelignError(f"{option}: the model's tokenizer has no chat template; explaining and detection "
                           "scoring need a chat (instruct) model")


class ChatDetector:
    """log P(Yes) - log P(No) for the first answer token of a local chat model."""

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, batch_size: int = 8,
                 option: str = "--detector"):
        check_chat_model(tokenizer, option)
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.yes = self._first_ids(["Yes", " Yes", "yes"])
        self.no = self._first_ids(["No", " No", "no"])

    def _first_ids(self, words: Sequence[str]) -> list[int]:
        return sorted({self.tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in words})

    @torch.inference_mode()
    def scores(self, label: str, texts: Sequence[str]) -> list[float]:
        from saelign.sails.generate import encode_chat  # lazy: saelign.sails imports the label package

        pad_id = pad_token_id(self.tokenizer)
        device = next(self.model.parameters()).device
        out: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            encoded = encode_chat(self.tokenizer, [DETECT_PROMPT.format(label=label, text=t[:600])
                                                   for t in texts[start:start + self.batch_size]])
            ids, mask = pad(encoded, pad_id)
            logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            last = logits[torch.arange(len(encoded)), mask.sum(1).to(device) - 1].log_softmax(-1)
            out += (last[:, self.yes].logsumexp(-1) - last[:, self.no].logsumexp(-1)).tolist()
        return out


class LikelihoodDetector:
    """How much the label raises the model's log-likelihood of the text: log P(text | "<label>" frame) minus
    log P(text | neutral frame), summed over the text's tokens. Needs no instruction following, so it works
    with small base and chat models alike; the neutral term is cached per text."""

    # Frames measured on SmolLM2-135M over held-out harmful/harmless and coding/other prompts: this one ranked
    # best of the three tried; a Yes/No question to the same model ranked worse.
    LABELLED = "The following request is about {label}.\n"
    NEUTRAL = "The following request is about something.\n"

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, batch_size: int = 8):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self._neutral: dict[str, float] = {}

    @torch.inference_mode()
    def _log_likelihood(self, prefix: str, texts: Sequence[str]) -> list[float]:
        """log P(text | prefix) summed over each text's tokens. The prefix is read once and its KV cache
        shared by every batch: it is most of each sequence's tokens (labels are long, requests short)."""
        pad_id = pad_token_id(self.tokenizer)
        device = next(self.model.parameters()).device
        head = torch.tensor([self.tokenizer(prefix, add_special_tokens=False)["input_ids"]], device=device)
        encoded = [self.tokenizer(t[:600], add_special_tokens=False)["input_ids"] for t in texts]
        read = self.model(input_ids=head, use_cache=True)
        first_logp = read.logits[0, -1].float().log_softmax(-1).cpu()  # predicts each text's first token
        order = sorted((i for i in range(len(texts)) if encoded[i]), key=lambda i: len(encoded[i]))
        out = [0.0] * len(texts)  # an empty text has log-probability 0
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            ids, mask = pad([encoded[i] for i in rows], pad_id)
            cache = copy.deepcopy(read.past_key_values)
            cache.batch_repeat_interleave(len(rows))
            seen = torch.cat([torch.ones(len(rows), head.shape[1], dtype=mask.dtype), mask], 1)
            logits = self.model(input_ids=ids.to(device), attention_mask=seen.to(device),
                                past_key_values=cache).logits
            # fused: no [B, T, vocab] log-softmax is kept, only each next token's log-probability
            token_logp = -F.cross_entropy(logits[:, :-1].float().transpose(1, 2), ids[:, 1:].to(device),
                                          reduction="none").cpu()  # [B, T-1]: tokens 1.. of each text
            for row, i in enumerate(rows):
                out[i] = float(first_logp[encoded[i][0]] + token_logp[row, :len(encoded[i]) - 1].sum())
        return out

    def scores(self, label: str, texts: Sequence[str]) -> list[float]:
        missing = [t for t in dict.fromkeys(texts) if t not in self._neutral]
        self._neutral.update(zip(missing, self._log_likelihood(self.NEUTRAL, missing), strict=True))
        labelled = self._log_likelihood(self.LABELLED.format(label=label), texts)
        return [value - self._neutral[t] for value, t in zip(labelled, texts, strict=True)]


def make_detector(name: str, explainer: tuple[nn.Module, PreTrainedTokenizerBase] | None, batch_size: int = 8,
                  embedder: str = DEFAULT_EMBEDDER, option: str = "--describe-detector") -> Detector:
    """The detector called `name`; 'likelihood' and 'chat' read with the explainer, 'embedding' with its own
    sentence embedder (`embedder`: 'minilm' or a local folder)."""
    if name not in DETECTORS:
        raise SaelignError(f"{option} {name!r}: unknown detector; use one of {', '.join(DETECTORS)}")
    if name == "embedding":
        return EmbeddingDetector(*load_embedder(embedder, option.replace("detector", "embedder")))
    if explainer is None:
        raise SaelignError(f"{option} {name}: this detector reads with the explainer model; give one")
    model, tokenizer = explainer
    if name == "chat":
        return ChatDetector(model, tokenizer, batch_size, option)
    return LikelihoodDetector(model, tokenizer, batch_size)


def balanced_accuracy(firing: Sequence[float], quiet: Sequence[float]) -> float:
    """Balanced accuracy of 'fires' = score above the median of all scores; ties count half."""
    if not firing or not quiet:
        raise SaelignError("the example set is empty: detection scoring needs firing and non-firing examples")
    # the midpoint of the two middle scores
    threshold = float(torch.tensor([*firing, *quiet], dtype=torch.float64).quantile(0.5))

    def hit(score: float, positive: bool) -> float:
        return 0.5 if score == threshold else float((score > threshold) == positive)

    recall = sum(hit(s, True) for s in firing) / len(firing)
    return 0.5 * (recall + sum(hit(s, False) for s in quiet) / len(quiet))


def held_out_examples(values: torch.Tensor, texts: Sequence[str], shown: set[str], n: int, seed: int = 0
                      ) -> tuple[list[str], list[str]]:
    """Up to n firing and as many non-firing texts, none of them in `shown`, sampled with a seeded RNG.

    Firing means > 0; for a latent that is > 0 on most prompts (common at the assistant header) that split
    says nothing, so there it means above the median value: the label must then tell strong from weak."""
    rng = random.Random(seed)
    threshold = float(values.float().median()) if float((values > 0).float().mean()) > 0.5 else 0.0
    firing = [t for t, v in zip(texts, values.tolist(), strict=True) if v > threshold and t not in shown]
    quiet = [t for t, v in zip(texts, values.tolist(), strict=True) if v <= threshold and t not in shown]
    m = min(n, len(firing), len(quiet))
    return rng.sample(firing, m), rng.sample(quiet, m)


def detection_score(detector: Detector, label: str, firing: Sequence[str], quiet: Sequence[str]) -> float:
    scores = detector.scores(label, [*firing, *quiet])  # one call: fuller batches, one read of the label
    return balanced_accuracy(scores[:len(firing)], scores[len(firing):])


def score_labels(detector: Detector, labels: Mapping[str, Mapping[int, str]], acts: torch.Tensor,
                 texts: Sequence[str], latents: Sequence[int], readings: Mapping[int, Reading] | None = None,
                 n: int = 10, seed: int = 0) -> dict[int, dict[str, float]]:
    """{latent: {label kind: balanced accuracy}} for every kind of label (e.g. tokens, grounded, model) on the
    same held-out examples; latents lacking firing or quiet held-out examples get nan. With readings, the
    scores are stored in each reading's `detection` (nan left out) and the prompts it shows are held out."""
    out: dict[int, dict[str, float]] = {}
    for col, latent in enumerate(latents):
        reading = (readings or {}).get(latent)
        shown = {e.prompt for e in reading.top_prompts + reading.bottom_prompts} if reading else set()
        firing, quiet = held_out_examples(acts[:, col], texts, shown, n, seed + latent)
        scores = {kind: (detection_score(detector, by_latent[latent], firing, quiet) if firing else math.nan)
                  for kind, by_latent in labels.items() if by_latent.get(latent)}
        if not firing:
            logger.info(f"latent {latent}: no held-out firing and non-firing prompts; detection not scored")
        out[latent] = scores
        if reading is not None:  # unscored kinds stay out of the sidecar (NaN is not JSON)
            reading.detection.update({kind: v for kind, v in scores.items() if not math.isnan(v)})
    return out
