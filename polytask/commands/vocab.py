"""``polytask vocab``: domain terms the tokenizer splits worst, and adding them to a model.

  polytask vocab --docs DIR --out terms.txt [--model M] [--top N] [--min-count K]
  polytask vocab --add-tokens terms.txt --model M --out MODEL_DIR [--docs DIR]

Terms are counted on the training documents of DIR only; tokens per word is reported on its
held-out documents (the ``docs`` task's test split), before and after adding the terms.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "vocab", help="find domain terms in documents (--docs --out) or add terms to a model (--add-tokens)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--docs", help="folder of documents (.txt .md .html .docx .pdf .eml)")
    p.add_argument("--out", required=True, help="terms file to write (with --docs) or model folder (with --add-tokens)")
    p.add_argument("--add-tokens", metavar="TERMS", help="terms file (one word per line) to add to --model")
    p.add_argument("--model", default="default", help="model whose tokenizer is measured / grown (default: default)")
    p.add_argument("--top", type=int, default=100, help="how many terms to keep (default 100)")
    p.add_argument("--min-count", type=int, default=5, help="a term occurs at least this often (default 5)")
    p.add_argument("--test-fraction", type=float, default=0.1, help="held-out share of the documents (default 0.1)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    p.set_defaults(func=run)


def _split_texts(docs: str, test_fraction: float) -> tuple[list[str], list[str]]:
    from polytask.docs import load_corpus, split_documents

    train, test = split_documents(load_corpus(docs).documents, test_fraction)
    return [d.text for d in train], [d.text for d in test]


def run(args: argparse.Namespace) -> int:
    from polytask.errors import PolytaskError
    from polytask.registry import resolve_model_dir
    from polytask.tokenizer import Tokenizer
    from polytask.vocab import find_terms, read_terms, tokens_per_word, with_terms, write_terms

    if args.top < 1 or args.min_count < 1:
        raise PolytaskError("--top and --min-count must be at least 1")
    if not 0 <= args.test_fraction < 1:
        raise PolytaskError(f"--test-fraction must be in [0, 1), got {args.test_fraction}")
    if not args.add_tokens and not args.docs:
        raise PolytaskError("give --docs DIR (find terms) or --add-tokens TERMS --model M (add them)")
    model_dir = resolve_model_dir(args.model)
    tok = Tokenizer(model_dir).tk
    train, held_out = _split_texts(args.docs, args.test_fraction) if args.docs else ([], [])

    if args.add_tokens:
        terms = read_terms(args.add_tokens)
        out = Path(args.out)
        if out.resolve() == model_dir.resolve():
            raise PolytaskError(f"--out {out} is the model's own folder; write the grown model to a new folder")
    else:
        found = find_terms(train or held_out, tok, args.top, args.min_count)
        if not found:
            raise PolytaskError(
                f"{args.docs}: no word occurs {args.min_count}+ times and costs 2+ tokens; lower --min-count"
            )
        write_terms(found, args.out)
        terms = [t.text for t in found]
    new_tok, added = with_terms(tok, terms)
    report = {"terms": len(terms), "added": len(added), "vocab_before": tok.get_vocab_size(),
              "vocab_after": new_tok.get_vocab_size()}
    if held_out:
        report["held_out_documents"] = len(held_out)
        report["tokens_per_word_before"] = round(tokens_per_word(held_out, tok), 4)
        report["tokens_per_word_after"] = round(tokens_per_word(held_out, new_tok), 4)

    if args.add_tokens:
        import torch

        from polytask.registry import load_model
        from polytask.vocab import grow_model, save_with_tokenizer

        model, _ = load_model(model_dir, torch.float32)
        grown = grow_model(model, added)
        save_with_tokenizer(grown, new_tok, model_dir, args.out)
        report["model_vocab"] = grown.config.vocab_size
        report["out"] = str(args.out)
    if args.json:
        print(json.dumps(report))
        return 0
    if args.add_tokens:
        print(f"polytask vocab: added {len(added)} of {len(terms)} terms; model vocabulary {report['model_vocab']} "
              f"-> {args.out}")
    else:
        print(f"polytask vocab: {len(terms)} terms -> {args.out} (top: {', '.join(terms[:8])})")
    if held_out:
        print(f"tokens per word on {len(held_out)} held-out documents: {report['tokens_per_word_before']:.3f} "
              f"before, {report['tokens_per_word_after']:.3f} with the terms")
    return 0
