"""Ask a BERT QA model on a Triton server one question about one context (like inference.py).

    python triton/client.py --question "Who won?" --context "The Broncos won the game." \\
        [-u localhost:8000 -i http | -u localhost:8001 -i grpc] [-m bert_qa]

With the text model (`bert_qa`, triton/model_repository.py) the server tokenises, windows long
contexts and picks the answer. Given a tensor model (`-m bert`, any backend) the client does that
itself with the project's SQuAD code and needs --vocab_file (and --do_lower_case for uncased vocabs).
Prints the answer and the n-best list as JSON, or one JSON object with --json.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import bert_io
import client_lib

from input_checks import InputError, check_at_least_one, run_main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    client_lib.add_connection_args(parser, model_default="bert_qa")
    parser.add_argument("--question", required=True)
    text = parser.add_mutually_exclusive_group(required=True)
    text.add_argument("--context")
    text.add_argument("--context_file", type=Path, help="read the context from this UTF-8 file")
    parser.add_argument("--json", action="store_true", help="print {question, answer, nbest} as one JSON object")
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=8,
                        help="windows per request when the client windows the context itself")
    tensor = parser.add_argument_group("client-side processing (only for a tensor model)")
    bert_io.add_squad_feature_args(tensor)
    bert_io.add_squad_answer_args(tensor)
    args = parser.parse_args(argv)
    bert_io.check_feature_args(args)
    check_at_least_one(args.batch_size, "--batch_size")
    return args


def read_context(args: argparse.Namespace) -> str:
    if args.context is not None:
        return args.context
    try:
        return args.context_file.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"--context_file {args.context_file}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InputError(f"--context_file {args.context_file}: not UTF-8 text") from None


def answer_locally(model: client_lib.TritonModel, args: argparse.Namespace, question: str,
                   context: str) -> tuple[str, list]:
    """Tokenise and window here, get logits from the tensor model, post-process here."""
    from processors import squad
    from tokenization import FullTokenizer

    if not args.vocab_file:
        raise InputError(f"model {model.name!r} takes token tensors: pass --vocab_file (and --do_lower_case)")
    if not question.strip():
        raise InputError("--question is empty")
    tokenizer = FullTokenizer(args.vocab_file, do_lower_case=args.do_lower_case)
    examples = [squad.example_from_text(question, context)]
    features = squad.convert_examples_to_features(examples, tokenizer, **bert_io.feature_settings(args))
    if not features:
        raise InputError("the context has no words")
    results = client_lib.feature_logits(model, features, args.batch_size)
    predictions = squad.get_answers(examples, features, results, **bert_io.answer_settings(args))
    qas_id = examples[0].qas_id
    return predictions.answers[qas_id], predictions.nbest[qas_id]


def main(argv: list[str] | None = None) -> tuple[str, list]:
    args = parse_args(argv)
    context = read_context(args)
    model = client_lib.open_model(args)
    if model.takes_text:
        answer, nbest = client_lib.ask_text_model(model, [args.question], [context])[0]
    else:
        answer, nbest = answer_locally(model, args, args.question, context)
    if args.json:
        print(json.dumps({"question": args.question, "answer": answer, "nbest": nbest}))
    else:
        print(f"question:  {args.question}\ncontext:  {context}\n\n{answer}\n\n{json.dumps(nbest, indent=4)}")
    return answer, nbest


if __name__ == "__main__":
    run_main(main)
