"""Answer one question about one context with a SQuAD fine-tuned model (the original's flags).

    python inference.py --init_checkpoint results/SQuAD --do_lower_case --n_best_size 3 \
        --question "Who founded the company?" --context "The company was founded by ..."

Prints the question, the context, the answer and the n-best list (text, probability, start and end
logit) as JSON. Contexts longer than one window are split with --doc_stride like run_squad.py (the
original truncated them). `--backend onnx --onnx_model model.onnx` runs an exported model in ONNX
Runtime instead of PyTorch.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bert_kernels import add_kernel_arguments, configure_kernels
from checkpoint_io import load_checkpoint, load_config_for_checkpoint, resolve_vocab_file
from distributed import seed_everything
from finetuning import check_fits_positions
from input_checks import InputError, run_main
from modeling import BertForQuestionAnswering
from precision import PRECISION_HELP, PRECISIONS, autocast_context, resolve_precision
from processors import squad

DEFAULT_QUESTION = "Most antibiotics target bacteria and don't affect what class of organisms? "
DEFAULT_CONTEXT = (
    "Within the genitourinary and gastrointestinal tracts, commensal flora serve as biological barriers by "
    "competing with pathogenic bacteria for food and space and, in some cases, by changing the conditions in "
    "their environment, such as pH or available iron. This reduces the probability that pathogens will reach "
    "sufficient numbers to cause illness. However, since most antibiotics non-specifically target bacteria and "
    "do not affect fungi, oral antibiotics can lead to an overgrowth of fungi and cause conditions such as a "
    "vaginal candidiasis (a yeast infection). There is good evidence that re-introduction of probiotic flora, "
    "such as pure cultures of the lactobacilli normally found in unpasteurized yogurt, helps restore a healthy "
    "balance of microbial populations in intestinal infections in children and encouraging preliminary data in "
    "studies on bacterial gastroenteritis, inflammatory bowel diseases, urinary tract infection and post-surgical "
    "infections. "
)
ONNX_INPUTS = ("input_ids", "token_type_ids", "attention_mask")
ONNX_OUTPUTS = ("start_logits", "end_logits")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bert_model", default="bert-large-uncased", help="informational only (as in the original)")
    p.add_argument("--init_checkpoint", help="fine-tuned QA model: run_squad.py's output folder or "
                                             "pytorch_model.bin, or a Hugging Face QA folder")
    p.add_argument("--config_file", help="bert_config.json (default: the one beside the checkpoint)")
    p.add_argument("--vocab_file", help="vocab.txt (default: the one beside the checkpoint or ONNX model)")
    p.add_argument("--question", default=DEFAULT_QUESTION)
    p.add_argument("--context", default=DEFAULT_CONTEXT)
    p.add_argument("--max_seq_length", type=int, default=384)
    p.add_argument("--doc_stride", type=int, default=128, help="tokens between windows of a long context")
    p.add_argument("--max_query_length", type=int, default=64)
    p.add_argument("--n_best_size", type=int, default=1)
    p.add_argument("--max_answer_length", type=int, default=30)
    p.add_argument("--do_lower_case", action="store_true")
    p.add_argument("--version_2_with_negative", action="store_true", help="the answer may be '' (no answer)")
    p.add_argument("--null_score_diff_threshold", type=float, default=-11.0)
    p.add_argument("--precision", choices=PRECISIONS, help=PRECISION_HELP)
    p.add_argument("--fp16", action="store_true", help="the original's flag: same as --precision fp16")
    p.add_argument("--no_cuda", action="store_true")
    p.add_argument("--local_rank", default=-1, help="accepted for compatibility")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--verbose_logging", action="store_true")
    p.add_argument("--backend", choices=("pytorch", "onnx"), default="pytorch")
    p.add_argument("--onnx_model", help="exported model for --backend onnx (inputs input_ids, token_type_ids, "
                                        "attention_mask; outputs start_logits, end_logits)")
    add_kernel_arguments(p)
    args = p.parse_args(argv)
    if args.backend == "onnx" and not args.onnx_model:
        raise InputError("--backend onnx needs --onnx_model")
    if args.backend == "pytorch" and not args.init_checkpoint:
        raise InputError("--init_checkpoint is required (or use --backend onnx --onnx_model)")
    squad.check_window_settings(args.max_seq_length, args.doc_stride, args.max_query_length)
    return args


def build_features(args: argparse.Namespace, tokenizer: Any) -> tuple[squad.SquadExample, list[squad.SquadFeature]]:
    if not args.context.strip():
        raise InputError("--context is empty")
    example = squad.example_from_text(args.question, args.context)
    features = squad.convert_examples_to_features(
        [example], tokenizer, max_seq_length=args.max_seq_length, doc_stride=args.doc_stride,
        max_query_length=args.max_query_length, is_training=False,
    )
    return example, features


def feature_arrays(features: list[squad.SquadFeature]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input_ids, segment_ids, input_mask) as int64 [windows, max_seq_length]."""
    ids = np.array([f.input_ids for f in features], dtype=np.int64)
    segments = np.array([f.segment_ids for f in features], dtype=np.int64)
    mask = np.array([f.input_mask for f in features], dtype=np.int64)
    return ids, segments, mask


def load_qa_model(args: argparse.Namespace, device: torch.device) -> BertForQuestionAnswering:
    config = load_config_for_checkpoint(args.init_checkpoint, args.config_file)
    check_fits_positions(args.max_seq_length, config)
    model = BertForQuestionAnswering(config)
    report = load_checkpoint(model, args.init_checkpoint, strict=False)
    if any(key.startswith("qa_outputs.") for key in report.initialized):
        raise InputError(f"{args.init_checkpoint}: has no question-answering head (qa_outputs); "
                         "fine-tune it with run_squad.py first")
    if args.verbose_logging:
        print(report.summary(), file=sys.stderr)
    return model.to(device).eval()


@torch.inference_mode()
def pytorch_qa_logits(model: torch.nn.Module, input_ids: np.ndarray, segment_ids: np.ndarray,
                      input_mask: np.ndarray, precision: str, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    tensors = [torch.from_numpy(a).to(device) for a in (input_ids, segment_ids, input_mask)]
    with autocast_context(precision, device):
        start, end = model(*tensors)
    return start.float().cpu().numpy(), end.float().cpu().numpy()


def onnx_qa_logits(session: Any, input_ids: np.ndarray, segment_ids: np.ndarray, input_mask: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Start/end logits from an onnxruntime.InferenceSession of an exported QA model.

    A model exported with a fixed batch size of 1 is run window by window; otherwise all at once.
    """
    batch_dim = session.get_inputs()[0].shape[0]
    rows = [slice(i, i + 1) for i in range(len(input_ids))] if batch_dim == 1 else [slice(None)]
    starts, ends = [], []
    for row in rows:
        feeds = dict(zip(ONNX_INPUTS, (input_ids[row], segment_ids[row], input_mask[row]), strict=True))
        start, end = session.run(list(ONNX_OUTPUTS), {k: v.astype(np.int64) for k, v in feeds.items()})
        starts.append(start)
        ends.append(end)
    return np.concatenate(starts).astype(np.float32), np.concatenate(ends).astype(np.float32)


def open_onnx_session(path: str) -> Any:
    import onnxruntime

    if not Path(path).is_file():
        raise InputError(f"ONNX model not found: {path}")
    return onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])


def answer(args: argparse.Namespace) -> tuple[str, list[dict[str, Any]]]:
    """The answer text and its n-best list for --question over --context."""
    from tokenization import FullTokenizer

    vocab_file = resolve_vocab_file(args.vocab_file, args.init_checkpoint or args.onnx_model)
    tokenizer = FullTokenizer(str(vocab_file), do_lower_case=args.do_lower_case)
    example, features = build_features(args, tokenizer)
    input_ids, segment_ids, input_mask = feature_arrays(features)
    if args.backend == "onnx":
        start, end = onnx_qa_logits(open_onnx_session(args.onnx_model), input_ids, segment_ids, input_mask)
    else:
        device = torch.device("cuda" if torch.cuda.is_available() and not args.no_cuda else "cpu")
        model = load_qa_model(args, device)  # checks the settings against the model first
        precision = resolve_precision(args.precision, args.fp16, device, notes=sys.stderr)
        start, end = pytorch_qa_logits(model, input_ids, segment_ids, input_mask, precision, device)
    results = [squad.RawResult(f.unique_id, start[i].tolist(), end[i].tolist()) for i, f in enumerate(features)]
    predictions = squad.get_answers(
        [example], features, results, n_best_size=args.n_best_size, max_answer_length=args.max_answer_length,
        do_lower_case=args.do_lower_case, version_2_with_negative=args.version_2_with_negative,
        null_score_diff_threshold=args.null_score_diff_threshold, verbose_logging=args.verbose_logging,
    )
    return predictions.answers[example.qas_id], predictions.nbest[example.qas_id]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    configure_kernels(args)
    seed_everything(args.seed)
    text, nbest = answer(args)
    print("question: ", args.question)
    print("context: ", args.context)
    print()
    print(text)
    print()
    print(json.dumps(nbest, indent=4))


if __name__ == "__main__":
    run_main(main)
