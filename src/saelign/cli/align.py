"""`saelign align {check,build,learn-facts,train,eval,swap,generate}`: AlignSAE from an ontology to a report
and slot edits."""

import argparse
from typing import Any

import yaml

from saelign.cli.common import add_stage_parser, build_config
from saelign.configs import add_config_args, config_from_args
from saelign.errors import SaelignError, require
from saelign.models import ModelConfig


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("align", help="AlignSAE: bind ontology concepts to SAE slots, evaluate, swap, guard",
                                   description="Concept-aligned SAEs: check or build an ontology, post-train an SAE "
                                               "so each concept owns one latent slot, evaluate it against the vanilla "
                                               "SAE (report), and edit the model through the slots.")
    group = parser.add_subparsers(dest="align_command", metavar="SUBCOMMAND", required=True)

    check = group.add_parser("check", help="validate an ontology and count its examples per concept and split")
    check.add_argument("--ontology", required=True, metavar="FILE", help="ontology .yaml/.json file or builtin:NAME")
    check.set_defaults(func=run_check)

    build = group.add_parser("build", help="build a built-in ontology from its pinned data, optionally keeping known facts")
    build.add_argument("--name", required=True, help="relations, biographies, pos, ner, sentiment or wordnet")
    build.add_argument("--out", required=True, metavar="FILE", help="where to write it (.yaml, .yml or .json)")
    build.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="a builder option, e.g. max_entities=20 or relations=[capital,currency] (repeatable)")
    build.add_argument("--filter-with-model", metavar="MODEL", help="keep only the facts this model answers ('default', "
                                                                   "an HF folder or .gguf); prints per-concept accuracy")
    build.add_argument("--min-accuracy", type=float, default=0.5, help="share of a fact's train prompts the model must get right")
    build.set_defaults(func=run_build)

    from saelign.align.learn import LearnFactsConfig
    from saelign.align.pipeline import AlignEvalConfig, AlignTrainConfig
    from saelign.align.posttrain import PostTrainConfig

    learn = group.add_parser(
        "learn-facts", help="fine-tune the model on an ontology's facts (e.g. biographies) and report its "
                            "accuracy on train and unseen templates",
        description="Fine-tune --model on the train prompts of --ontology until it answers them; writes "
                    "OUT/model (use it as --model afterwards) and OUT/facts.json. Rerun the same command to "
                    "resume. A --config file holds the options in `model:` and `learn:` sections.")
    learn.add_argument("--config", default=None, metavar="FILE",
                       help="YAML/JSON file with options (flags override it)")
    add_config_args(learn, ModelConfig)
    add_config_args(learn, LearnFactsConfig)
    learn.set_defaults(func=run_learn_facts)

    train = add_stage_parser(group, "train",
                             help="post-train an SAE on an ontology (writes the aligned SAE + slot_map.json)",
                             configs=[(ModelConfig, ""), (AlignTrainConfig, ""), (PostTrainConfig, "")],
                             sections=("model", "align", "posttrain"),
                             description="Post-train --sae so every concept of --ontology gets one latent slot. Generic "
                                         "activations come from --store or are captured on the fly from --corpus. "
                                         "Rerun the same command to resume. A --config file holds the options in "
                                         "`model:`, `align:` and `posttrain:` sections.")
    train.set_defaults(func=run_train, data_parallel=True)
    evaluate = add_stage_parser(group, "eval", help="binding, AUC, FVU, entanglement, fragmentation and swap α sweep vs "
                                                    "the vanilla SAE; metrics.json + report.md/.html",
                                configs=[(ModelConfig, ""), (AlignEvalConfig, "")], sections=("model", "eval"),
                                description="Evaluate an aligned SAE against the SAE it came from. A --config"
                                            " file holds the options in `model:` and `eval:` sections.")
    evaluate.set_defaults(func=run_eval)

    swap = group.add_parser("swap", help="the model's answer before and after a concept swap")
    _tool_args(swap)
    swap.add_argument("--source", required=True, help="concept whose slot is set to 0")
    swap.add_argument("--target", required=True, help="concept whose slot is set to α × its scale")
    swap.add_argument("--alpha", type=float, default=2.0, help="target amplitude in slot units (default: 2)")
    swap.set_defaults(func=run_swap)

    generate = group.add_parser("generate", help="generate with concept slots zeroed or guarded")
    _tool_args(generate)
    generate.add_argument("--zero", action="append", default=[], metavar="CONCEPT", help="remove this concept's slot (repeatable)")
    generate.add_argument("--guard", action="append", default=[], metavar="CONCEPT",
                          help="zero this concept's slot whenever it fires and report where (repeatable)")
    generate.set_defaults(func=run_generate)


def _tool_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--aligned", required=True, metavar="DIR", help="folder written by `saelign align train`")
    parser.add_argument("--prompt", required=True, help="the prompt text")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="tokens to generate (default: 16)")
    add_config_args(parser, ModelConfig)


def run_check(args: argparse.Namespace) -> int:
    from saelign.align.pipeline import example_counts, resolve_ontology

    ontology = resolve_ontology(args.ontology)
    rows = example_counts(ontology)
    print(f"ontology {ontology.name!r}: {len(rows)} concepts, position {ontology.position}")
    width = max(len(r["concept"]) for r in rows)
    print(f"  {'concept':{width}s}  train   test")
    for r in rows:
        print(f"  {r['concept']:{width}s}  {r['train']:5d}  {r['test']:5d}")
    print(f"  {'total':{width}s}  {sum(r['train'] for r in rows):5d}  {sum(r['test'] for r in rows):5d}")
    return 0


def _options(pairs: list[str]) -> dict[str, Any]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        require(sep and key, f"--set {pair!r}: write KEY=VALUE, e.g. --set max_entities=20")
        try:
            options[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise SaelignError(f"--set {pair!r}: cannot parse the value ({exc})") from exc
    return options


def run_build(args: argparse.Namespace) -> int:
    from saelign.align.builtin import build_ontology, filter_known_facts
    from saelign.align.ontology import save_ontology
    from saelign.models import load_model

    if not args.out.endswith((".yaml", ".yml", ".json")):
        raise SaelignError(f"--out {args.out}: use a .yaml, .yml or .json file name")
    ontology = build_ontology(args.name, **_options(args.set))
    if args.filter_with_model:
        model, tokenizer = load_model(ModelConfig(model=args.filter_with_model))
        ontology, report = filter_known_facts(model, tokenizer, ontology, min_accuracy=args.min_accuracy)
        print(f"{'concept':20s} facts  kept  train acc  test acc")
        for name, r in report.items():
            test = "" if r["test_accuracy"] is None else f"{r['test_accuracy']:.2f}"
            print(f"{name:20s} {r['facts']:5d} {r['kept']:5d}  {r['train_accuracy']:9.2f}  {test:>8s}")
    path = save_ontology(ontology, args.out)
    print(f"{ontology.name}: {len(ontology.concepts)} concepts -> {path}")
    return 0


def run_learn_facts(args: argparse.Namespace) -> int:
    from saelign.align.learn import LearnFactsConfig, learn_facts

    report = learn_facts(build_config(ModelConfig, args, section="model"),
                         build_config(LearnFactsConfig, args, section="learn"))
    accuracy = report["accuracy"]
    print(f"{report['facts']} facts, {report['train_pairs']} train prompts, {report['steps']} steps "
          f"({report['train_minutes']:.1f} min)")
    for split, label in (("train", "train templates: "), ("test", "unseen templates:")):
        if accuracy[split] is not None:
            print(f"  accuracy, {label} {accuracy[split]:.3f}")
        for style, value in accuracy[f"{split}_by_style"].items():
            print(f"    {style:24s} {value:.3f}")
    print(f"model: {report['model']}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from saelign.align.pipeline import AlignTrainConfig, train_aligned
    from saelign.align.posttrain import PostTrainConfig

    model_cfg = build_config(ModelConfig, args, section="model")
    cfg = build_config(AlignTrainConfig, args, section="align")
    post = build_config(PostTrainConfig, args, section="posttrain")
    aligned, slot_map = train_aligned(model_cfg, cfg, post)
    for concept, slot in zip(slot_map.concepts, slot_map.slots, strict=True):
        print(f"  {concept} -> latent {slot}")
    print(f"aligned SAE (d_sae={aligned.cfg.d_sae}) and slot_map.json in {post.out}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from saelign.align.pipeline import AlignEvalConfig, evaluate_aligned
    from saelign.align.report import target_checks

    cfg = build_config(AlignEvalConfig, args, section="eval")
    metrics = evaluate_aligned(build_config(ModelConfig, args, section="model"), cfg)
    for row in target_checks(metrics):
        value = "n/a" if row["value"] is None else f"{row['value']:.3f}"
        print(f"  {row['target']:45s} {value:>7s}  goal {row['goal']:8s} met: {row['met']}")
    print(f"metrics: {cfg.out}/metrics.json\nreport: {cfg.out}/report.html")
    return 0


def run_swap(args: argparse.Namespace) -> int:
    from saelign.align.pipeline import swap_generate

    before, after = swap_generate(args.aligned, args.prompt, args.source, args.target, args.alpha,
                                  config_from_args(ModelConfig, args), args.max_new_tokens)
    print(f"prompt: {args.prompt}")
    print(f"before: {before}")
    print(f"after ({args.source} -> {args.target}, α={args.alpha:g}): {after}")
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from saelign.align.pipeline import guarded_generate

    result = guarded_generate(args.aligned, args.prompt, args.zero, args.guard,
                              config_from_args(ModelConfig, args), args.max_new_tokens)
    print(f"prompt: {args.prompt}")
    print(f"plain:  {result['plain']}")
    print(f"edited: {result['edited']}")
    if args.guard:
        events = result["guard_events"]
        shown = ", ".join(f"{e['concept']}@{e['position']} ({e['value']:.2f})" for e in events[:10])
        print(f"guard: {len(events)} event(s)" + (f": {shown}" if shown else ""))
    return 0
