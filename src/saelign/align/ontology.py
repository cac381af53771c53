"""The ontology format: the concepts an aligned SAE binds to slots, their examples, and which token carries them.

A YAML or JSON file (examples in examples/ontologies/):

    name: country-facts                  # required
    description: free text               # optional
    position: last_prompt_token          # which token carries the concept: last_prompt_token (default),
                                         # entity_last_token (last token of the entity), or marker
    marker: "[[*]]"                      # with position: marker, written right after the carrying token; removed
    require_answers: true                # every example / entity must give the expected answer
    test_fraction: 0.2                   # share of plain examples without `split` held out (stable hash of text)
    templates: {train: [...], test: [...]}  # shared by entity concepts that have no templates of their own
    source: {...}                        # free-form provenance (data files, versions, fact-filter accuracy)
    concepts:                            # at least 2, unique names
      - name: capital
        description: the capital city of a country
        templates:                       # prompts with an {entity} placeholder; the test ones are never trained
          train: ["The capital of {entity} is", "{entity}'s capital city is"]
          test: ["Q: What is the capital of {entity}?\\nA:", "Name the capital of {entity}.\\nAnswer:"]
          test_styles: [qa, instruction]  # optional, one per test template: metrics report binding per style
          train_styles: [fill_in, fill_in]  # optional, one per train template (fact accuracy per style)
        entities:                        # each entity × each template is one example
          - {entity: France, answer: Paris}
          - {entity: Germany, answer: Berlin, aliases: [Bonn]}
      - name: positive
        examples:                        # or labelled texts, with optional answer, entity and split (train/test)
          - {text: "What a wonderful film", split: test}

A concept has either `examples` or `entities` (never both). Answers continue the prompt after a space; `aliases`
are other accepted answers. Templates are split at template level, so the test split measures generalisation
to unseen phrasings of the same facts."""

import dataclasses
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from transformers import PreTrainedTokenizerBase

from saelign.errors import SaelignError
from saelign.io import write_text_atomic

PLACEHOLDER = "{entity}"
POSITIONS = ("last_prompt_token", "entity_last_token", "marker")
Split = Literal["train", "test"]

_ONTOLOGY_FIELDS = {"name", "description", "position", "marker", "require_answers", "test_fraction", "templates",
                    "source", "concepts"}
_CONCEPT_FIELDS = {"name", "description", "examples", "entities", "templates"}
_EXAMPLE_FIELDS = {"text", "answer", "entity", "split"}
_ENTITY_FIELDS = {"entity", "answer", "aliases"}
_TEMPLATE_FIELDS = {"train", "test", "train_styles", "test_styles"}


@dataclass(frozen=True)
class LabelledText:
    text: str
    answer: str | None = None
    entity: str | None = None
    split: Split | None = None


@dataclass(frozen=True)
class Entity:
    entity: str
    answer: str | None = None
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Templates:
    train: tuple[str, ...]
    test: tuple[str, ...] = ()
    test_styles: tuple[str, ...] = ()  # empty, or one phrasing style per test template (qa, fill_in, ...)
    train_styles: tuple[str, ...] = ()  # the same for the train templates

    def style(self, part: str, index: int) -> str | None:
        styles = self.test_styles if part == "test" else self.train_styles
        return styles[index] if styles else None


def styled_templates(train: tuple[str, ...] | dict[str, tuple[str, ...]],
                     test_by_style: dict[str, tuple[str, ...]]) -> Templates:
    """Templates whose unseen (test) ones, and optionally the train ones, are given per phrasing style, in the
    style order given (train as a plain tuple: no train styles)."""
    def flat(by_style: dict[str, tuple[str, ...]]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        pairs = [(style, t) for style, templates in by_style.items() for t in templates]
        return tuple(t for _, t in pairs), tuple(style for style, _ in pairs)

    train_templates, train_styles = flat(train) if isinstance(train, dict) else (train, ())
    return Templates(train_templates, *flat(test_by_style), train_styles)


@dataclass(frozen=True)
class Concept:
    name: str
    description: str = ""
    examples: tuple[LabelledText, ...] = ()
    entities: tuple[Entity, ...] = ()
    templates: Templates | None = None


@dataclass(frozen=True)
class ConceptExample:
    """One prompt labelled with its concept; `char_index` is the last character of the span whose last token
    carries the concept (see `concept_token_index`)."""

    text: str
    concept: str
    concept_index: int
    entity: str | None
    answer: str | None
    template_id: str | None
    split: Split
    char_index: int
    aliases: tuple[str, ...] = ()
    style: str | None = None  # the template's phrasing style, when the ontology names one


@dataclass(frozen=True)
class Ontology:
    name: str
    concepts: tuple[Concept, ...]
    description: str = ""
    position: str = "last_prompt_token"
    marker: str = "[[*]]"
    require_answers: bool = False
    test_fraction: float = 0.2
    templates: Templates | None = None
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def concept_names(self) -> list[str]:
        return [c.name for c in self.concepts]

    def templates_for(self, concept: Concept) -> Templates | None:
        return (concept.templates or self.templates) if concept.entities else None

    def examples(self, split: Split | None = "train") -> list[ConceptExample]:
        """Expand every concept into labelled prompts of one split (None: both), in concept order."""
        out: list[ConceptExample] = []
        for index, concept in enumerate(self.concepts):
            templates = self.templates_for(concept)
            if templates is not None:
                owner = f"{concept.name}/" if concept.templates else ""
                for part in ("train", "test"):
                    if split not in (None, part):
                        continue
                    for t_index, template in enumerate(getattr(templates, part)):
                        for ent in concept.entities:
                            text, char = self.fill(template, ent.entity)
                            out.append(ConceptExample(text, concept.name, index, ent.entity, ent.answer,
                                                      f"{owner}{part}/{t_index}", part, char, ent.aliases,
                                                      templates.style(part, t_index)))
            for ex in concept.examples:
                hashed = zlib.crc32(ex.text.encode("utf-8")) / 2**32 < self.test_fraction
                part = ex.split or ("test" if hashed else "train")
                if split in (None, part):
                    text, char = self.fill(ex.text, ex.entity, literal_entity=True)
                    out.append(ConceptExample(text, concept.name, index, ex.entity, ex.answer, None, part, char))
        return out

    def fill(self, template: str, entity: str | None, literal_entity: bool = False) -> tuple[str, int]:
        """(prompt text, index of its concept character) for a template, or for a plain example's text when
        `literal_entity` (the text already holds the entity; markers are removed either way)."""
        text = template if literal_entity else template.replace(PLACEHOLDER, entity or "")
        if self.position == "marker":
            at = text.index(self.marker)
            return text[:at] + text[at + len(self.marker):], at - 1
        if self.position == "entity_last_token":
            if literal_entity:
                return text, text.rindex(entity or "") + len(entity or "") - 1
            head = template[: template.rindex(PLACEHOLDER)].replace(PLACEHOLDER, entity or "")
            return text, len(head) + len(entity or "") - 1
        return text, len(text.rstrip()) - 1

    def validate(self, where: str = "ontology") -> "Ontology":
        """Check the semantics (parsing already checked field names and types); return self."""
        if not self.name.strip():
            raise SaelignError(f"{where}: `name` is empty; give the ontology a name")
        if self.position not in POSITIONS:
            raise SaelignError(f"{where}: position {self.position!r} is not one of {', '.join(POSITIONS)}")
        if not 0 <= self.test_fraction < 1:
            raise SaelignError(f"{where}: test_fraction {self.test_fraction} must be in [0, 1)")
        if len(self.concepts) < 2:
            raise SaelignError(f"{where}: {len(self.concepts)} concept(s); an ontology needs at least 2 concepts to bind")
        seen: set[str] = set()
        for i, concept in enumerate(self.concepts):
            here = f"{where}: concepts[{i}] ({concept.name!r})"
            if not concept.name.strip():
                raise SaelignError(f"{where}: concepts[{i}] has an empty name; give every concept a name")
            if concept.name in seen:
                raise SaelignError(f"{here}: duplicate concept name; concept names must be unique (rename or merge them)")
            seen.add(concept.name)
            self._validate_concept(concept, here)
        if self.templates is not None:
            self._validate_templates(self.templates, f"{where}: templates")
        self._check_conflicts(where)
        return self

    def _validate_concept(self, concept: Concept, here: str) -> None:
        if concept.examples and concept.entities:
            raise SaelignError(f"{here}: has both `examples` and `entities`; split it into two concepts or use one kind")
        if not concept.examples and not concept.entities:
            raise SaelignError(f"{here}: concept is empty; give it `examples` or `entities` (or remove it)")
        if concept.templates is not None and not concept.entities:
            raise SaelignError(f"{here}: `templates` need `entities` to fill {PLACEHOLDER}; add entities or drop templates")
        if concept.entities and self.templates_for(concept) is None:
            raise SaelignError(f"{here}: has entities but no templates; add `templates` to it or to the ontology")
        if concept.templates is not None:
            self._validate_templates(concept.templates, f"{here}.templates")
        names: set[str] = set()
        for j, ent in enumerate(concept.entities):
            if not ent.entity.strip():
                raise SaelignError(f"{here}.entities[{j}]: empty entity; remove it or fill it in")
            if ent.entity in names:
                raise SaelignError(f"{here}.entities[{j}]: duplicate entity {ent.entity!r}; list each entity once")
            names.add(ent.entity)
            if self.require_answers and not ent.answer:
                raise SaelignError(f"{here}.entities[{j}] ({ent.entity!r}): missing `answer`, required by require_answers")
        for j, ex in enumerate(concept.examples):
            self._validate_example(ex, f"{here}.examples[{j}]")

    def _validate_example(self, ex: LabelledText, here: str) -> None:
        if not ex.text.strip():
            raise SaelignError(f"{here}: empty `text`; remove the example or fill it in")
        if self.require_answers and not ex.answer:
            raise SaelignError(f"{here}: missing `answer`, required by require_answers")
        if self.position == "entity_last_token" and (not ex.entity or ex.entity not in ex.text):
            raise SaelignError(f"{here}: position entity_last_token needs an `entity` that occurs in the text")
        if self.position == "marker":
            self._check_marker(ex.text, here)

    def _validate_templates(self, templates: Templates, here: str) -> None:
        if not templates.train:
            raise SaelignError(f"{here}: no train templates; give at least one under `train`")
        overlap = set(templates.train) & set(templates.test)
        if overlap:
            raise SaelignError(f"{here}: template {sorted(overlap)[0]!r} is in both train and test; test templates must be unseen")
        for part in ("train", "test"):
            styles, count = getattr(templates, f"{part}_styles"), len(getattr(templates, part))
            if styles and len(styles) != count:
                raise SaelignError(f"{here}.{part}_styles: {len(styles)} style(s) for {count} {part} template(s); "
                                   f"give one style per {part} template, in the same order, or none")
            if any(not style.strip() for style in styles):
                raise SaelignError(f"{here}.{part}_styles: an empty style name; name every style (qa, fill_in...)")
        for part in ("train", "test"):
            for k, template in enumerate(getattr(templates, part)):
                if PLACEHOLDER not in template:
                    raise SaelignError(f"{here}.{part}[{k}] {template!r} lacks the {PLACEHOLDER} placeholder; "
                                       f"write where the entity goes, e.g. 'The capital of {PLACEHOLDER} is'")
                if self.position == "marker":
                    self._check_marker(template, f"{here}.{part}[{k}]")

    def _check_marker(self, text: str, here: str) -> None:
        if text.count(self.marker) != 1 or text.startswith(self.marker):
            raise SaelignError(f"{here}: with position marker the text needs exactly one {self.marker!r}, "
                               "placed right after the token that carries the concept")

    def _check_conflicts(self, where: str) -> None:
        owner: dict[str, str] = {}
        for ex in self.examples(split=None):
            other = owner.setdefault(ex.text, ex.concept)
            if other != ex.concept:
                raise SaelignError(f"{where}: the prompt {ex.text!r} is labelled both {other!r} and {ex.concept!r}; "
                                   "a prompt must carry one concept (remove one of the two)")

    def to_dict(self) -> dict[str, Any]:
        """The file form: only fields that differ from their defaults."""
        data: dict[str, Any] = {"name": self.name}
        defaults = Ontology(name="", concepts=())
        for key in ("description", "position", "marker", "require_answers", "test_fraction"):
            if getattr(self, key) != getattr(defaults, key):
                data[key] = getattr(self, key)
        if self.templates is not None:
            data["templates"] = _templates_dict(self.templates)
        if self.source:
            data["source"] = self.source
        data["concepts"] = [_concept_dict(c) for c in self.concepts]
        return data


def _templates_dict(t: Templates) -> dict[str, list[str]]:
    styles = {f"{part}_styles": list(getattr(t, f"{part}_styles")) for part in ("train", "test")
              if getattr(t, f"{part}_styles")}
    return {"train": list(t.train), "test": list(t.test), **styles}


def _concept_dict(c: Concept) -> dict[str, Any]:
    data: dict[str, Any] = {"name": c.name}
    if c.description:
        data["description"] = c.description
    if c.templates is not None:
        data["templates"] = _templates_dict(c.templates)
    if c.entities:
        data["entities"] = [{k: list(v) if k == "aliases" else v for k, v in dataclasses.asdict(e).items() if v}
                            for e in c.entities]
    if c.examples:
        data["examples"] = [{k: v for k, v in dataclasses.asdict(e).items() if v is not None} for e in c.examples]
    return data


def _fields(data: Any, allowed: set[str], required: set[str], where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise SaelignError(f"{where}: expected a mapping with fields {', '.join(sorted(allowed))}, got {type(data).__name__}")
    unknown = sorted(set(map(str, data)) - allowed)
    if unknown:
        raise SaelignError(f"{where}: unknown field(s) {', '.join(unknown)}; valid fields: {', '.join(sorted(allowed))}")
    missing = sorted(required - set(data))
    if missing:
        raise SaelignError(f"{where}: missing required field(s) {', '.join(missing)}")
    return data


def _string(value: Any, where: str, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise SaelignError(f"{where}: expected a string, got {value!r}")
    return str(value)


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise SaelignError(f"{where}: expected a list of strings, got {type(value).__name__}")
    return tuple(_string(v, f"{where}[{i}]") for i, v in enumerate(value))


def _items(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise SaelignError(f"{where}: expected a list, got {type(value).__name__}")
    return value


def _parse_templates(value: Any, where: str) -> Templates | None:
    if value is None:
        return None
    data = _fields(value, _TEMPLATE_FIELDS, {"train"}, where)
    return Templates(_strings(data["train"], f"{where}.train"), _strings(data.get("test"), f"{where}.test"),
                     _strings(data.get("test_styles"), f"{where}.test_styles"),
                     _strings(data.get("train_styles"), f"{where}.train_styles"))


def _parse_example(value: Any, where: str) -> LabelledText:
    data = _fields(value, _EXAMPLE_FIELDS, {"text"}, where)
    split = data.get("split")
    if split not in (None, "train", "test"):
        raise SaelignError(f"{where}.split: {split!r} is not train or test")
    return LabelledText(_string(data["text"], f"{where}.text"),
                        _string(data.get("answer"), f"{where}.answer", True),
                        _string(data.get("entity"), f"{where}.entity", True), split)


def _parse_entity(value: Any, where: str) -> Entity:
    data = _fields(value, _ENTITY_FIELDS, {"entity"}, where)
    return Entity(_string(data["entity"], f"{where}.entity"), _string(data.get("answer"), f"{where}.answer", True),
                  _strings(data.get("aliases"), f"{where}.aliases"))


def _parse_concept(value: Any, where: str) -> Concept:
    data = _fields(value, _CONCEPT_FIELDS, {"name"}, where)
    name = _string(data["name"], f"{where}.name")
    where = f"{where} ({name!r})"
    return Concept(
        name=name,
        description=_string(data.get("description") or "", f"{where}.description"),
        examples=tuple(_parse_example(v, f"{where}.examples[{j}]") for j, v in enumerate(_items(data.get("examples"), f"{where}.examples"))),
        entities=tuple(_parse_entity(v, f"{where}.entities[{j}]") for j, v in enumerate(_items(data.get("entities"), f"{where}.entities"))),
        templates=_parse_templates(data.get("templates"), f"{where}.templates"),
    )


def ontology_from_dict(data: Any, where: str = "ontology") -> Ontology:
    """Parse and validate the file form; errors name `where`, the field and the fix."""
    data = _fields(data, _ONTOLOGY_FIELDS, {"name", "concepts"}, where)
    require_answers = data.get("require_answers", False)
    if not isinstance(require_answers, bool):
        raise SaelignError(f"{where}: require_answers must be true or false, got {require_answers!r}")
    test_fraction = data.get("test_fraction", 0.2)
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, int | float):
        raise SaelignError(f"{where}: test_fraction must be a number in [0, 1), got {test_fraction!r}")
    source = data.get("source") or {}
    if not isinstance(source, dict):
        raise SaelignError(f"{where}: source must be a mapping, got {type(source).__name__}")
    concepts = _items(data["concepts"], f"{where}: concepts")
    return Ontology(
        name=_string(data["name"], f"{where}: name"),
        description=_string(data.get("description") or "", f"{where}: description"),
        position=_string(data.get("position", "last_prompt_token"), f"{where}: position"),
        marker=_string(data.get("marker", "[[*]]"), f"{where}: marker"),
        require_answers=require_answers, test_fraction=float(test_fraction), source=source,
        templates=_parse_templates(data.get("templates"), f"{where}: templates"),
        concepts=tuple(_parse_concept(c, f"{where}: concepts[{i}]") for i, c in enumerate(concepts)),
    ).validate(where)


def load_ontology(path: str | Path) -> Ontology:
    """Read a .yaml/.yml/.json ontology file and validate it."""
    path = Path(path)
    if not path.is_file():
        raise SaelignError(f"ontology file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except UnicodeDecodeError as exc:
        raise SaelignError(f"ontology {path}: not UTF-8 text (byte {exc.start}); convert it to UTF-8") from exc
    except RecursionError as exc:
        raise SaelignError(f"ontology {path}: nests too deeply to be read; fix the file") from exc
    except json.JSONDecodeError as exc:
        raise SaelignError(f"ontology {path}: not valid JSON (line {exc.lineno}: {exc.msg})") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        raise SaelignError(f"ontology {path}: not valid YAML ({line}{getattr(exc, 'problem', exc)})") from exc
    return ontology_from_dict(data, where=f"ontology {path}")


def save_ontology(ontology: Ontology, path: str | Path) -> Path:
    """Write atomically as JSON (.json) or YAML (.yaml/.yml)."""
    path = Path(path)
    data = ontology.to_dict()
    if path.suffix == ".json":
        text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    elif path.suffix in (".yaml", ".yml"):
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=120)
    else:
        raise SaelignError(f"cannot save an ontology as {path.name}: use a .yaml, .yml or .json file name")
    write_text_atomic(path, text)
    return path


def concept_token_index(tokenizer: PreTrainedTokenizerBase, text: str, char_index: int,
                        add_special_tokens: bool = True) -> int:
    """Index, in `tokenizer(text)`'s input ids, of the token that holds character `char_index` of `text`."""
    if not getattr(tokenizer, "is_fast", False):
        return len(tokenizer(text[: char_index + 1], add_special_tokens=add_special_tokens)["input_ids"]) - 1
    enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    hits = [i for i, (start, end) in enumerate(enc["offset_mapping"]) if start <= char_index < end]
    if not hits:
        raise SaelignError(f"no token covers character {char_index} of {text!r}; check the ontology's position")
    return hits[-1]
