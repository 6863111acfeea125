"""BERT pretraining (MLM + NSP) with LAMB on HDF5 shards, phase 1 and phase 2, as NVIDIA's recipe.

Single process, `torchrun`, or `srun` (SLURM variables). Reads top to bottom: flags, then the
`Trainer` — micro-batches from this rank's `ShardStream` → forward/backward under autocast
(`micro_step`) → at each accumulation boundary all-reduce, LAMB step skipped on fp16 overflow,
schedule (`optimizer_step`; both through `training.Stepper`, the step fine-tuning uses too) → log,
evaluate, checkpoint (`train`) — then `main`.

Components behind small interfaces: the data stream (`data/pretraining_dataset.py`), checkpoints
(`checkpointing.Checkpointer`), FLOPs/MFU (`flops.py`), shared plumbing (`training.py`) and the
periodic evaluator (`evaluation.PeriodicEvaluator`).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

import distributed
import input_checks
import loss_curve
import run_log
import training
from batch_packing import UnpadChoice, add_packing_arguments, choose_unpad, masked_positions_from_labels, pack_batch
from bert_kernels import (
    PackedSequences,
    add_kernel_arguments,
    configure_kernels,
    cpu_gemm_backend,
    flash_varlen_problem,
    mark_token_count_dynamic,
)
from checkpointing import Checkpointer, RunState, plain_flags
from data.pretraining_dataset import (
    DataPosition,
    ShardStream,
    TokenLimits,
    add_binning_arguments,
    add_masking_arguments,
    check_shard_shapes,
    epoch_file_order,
    list_shards,
    masker_from_args,
)
from evaluation import PeriodicEvaluator, add_periodic_evaluation_arguments
from flops import FlopsCounter, model_flops_utilization
from input_checks import InputError
from modeling import BertConfig, BertForPreTraining, BertPretrainingCriterion
from optimization import add_lamb_arguments, build_lamb, fused_lamb_setting, pretraining_param_groups
from precision import PRECISION_HELP, PRECISIONS, apply_tf32, resolve_precision
from schedulers import build_scheduler

# --------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="BERT pretraining with LAMB (phase 1 / phase 2).")
    req = p.add_argument_group("required")
    req.add_argument("--input_dir", required=True,
                     help="folder of .hdf5 shards; files whose name contains 'training' are used")
    req.add_argument("--config_file", required=True, help="model config JSON (bert_config.json)")
    req.add_argument("--output_dir", required=True, help="where ckpt_<step>.pt checkpoints are written")
    p.add_argument("--init_checkpoint", default=None,
                   help="start from these weights (any layout load_checkpoint accepts)")
    p.add_argument("--max_seq_length", type=int, default=512, help="error if the shards' sequences are longer")
    p.add_argument("--max_predictions_per_seq", type=int, default=80,
                   help="masked positions per sequence in the shards")
    p.add_argument("--train_batch_size", type=int, default=32,
                   help="per-rank batch per optimizer step (micro-batch × accumulation)")
    p.add_argument("--learning_rate", type=float, default=5e-5, help="peak learning rate")
    p.add_argument("--max_steps", type=float, default=1000, help="total optimizer steps (the LR-schedule horizon)")
    p.add_argument("--warmup_proportion", type=float, default=0.01, help="fraction of max_steps spent warming up")
    p.add_argument("--seed", type=int, default=42, help="seed; ranks use seed + rank for dropout")
    p.add_argument("--gradient_accumulation_steps", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--fp16", "--amp", dest="fp16", action="store_true", help="fp16 autocast with loss scaling")
    p.add_argument("--precision", choices=PRECISIONS, default=None, help=PRECISION_HELP)
    p.add_argument("--loss_scale", type=float, default=0.0, help=training.LOSS_SCALE_HELP)
    p.add_argument("--init_loss_scale", type=int, default=2**20, help="initial dynamic loss scale (fp16)")
    p.add_argument("--log_freq", type=float, default=1.0, help="log every N optimizer steps")
    p.add_argument("--checkpoint_activations", action="store_true", help="recompute encoder activations in backward")
    p.add_argument("--resume_from_checkpoint", action="store_true",
                   help="resume from the newest valid ckpt in output_dir")
    p.add_argument("--resume_step", type=int, default=-1, help="resume from this step's checkpoint (-1 = newest)")
    p.add_argument("--num_steps_per_checkpoint", type=int, default=100, help="save every N optimizer steps")
    p.add_argument("--skip_checkpoint", action="store_true", help="do not write checkpoints")
    p.add_argument("--keep_checkpoints", type=int, default=3,
                   help="ckpt_*.pt of --output_dir to keep, newest by step, whichever job wrote them (0 = all)")
    p.add_argument("--phase2", action="store_true", help="phase-2 semantics: start from phase 1's last checkpoint")
    p.add_argument("--allow_missing_optimizer_state", action="store_true",
                   help="resume from a checkpoint without optimizer state (LAMB's moments restart from zero); "
                        "refused otherwise")
    p.add_argument("--allreduce_post_accumulation", action="store_true",
                   help="all-reduce gradients once per optimizer step")
    p.add_argument("--allreduce_post_accumulation_fp16", action="store_true", help="do that all-reduce in fp16")
    p.add_argument("--phase1_end_step", type=int, default=7038,
                   help="steps of phase 1; offsets phase-2 checkpoint names")
    p.add_argument("--do_train", action="store_true", help="must be set, as in the original")
    p.add_argument("--json-summary", dest="json_summary", default="results/dllogger.json", help="dllogger JSON output")
    p.add_argument("--disable_progress_bar", action="store_true", help="no tqdm progress bar")
    p.add_argument("--steps_this_run", type=int, default=-1,
                   help="stop once the phase's global step (counted from 0 in each phase, not per job) reaches "
                        "this; -1 = max_steps. The LR horizon stays max_steps. A chain of time-limited jobs passes "
                        "a larger value to each resumed job (or relies on run.sub's requeue on a stop signal)")
    # Added by this implementation.
    p.add_argument("--lr_scheduler", default="poly", choices=("poly", "linear", "cosine", "constant"),
                   help="LR schedule")
    p.add_argument("--no_dense_seq_output", dest="dense_seq_output", action="store_false",
                   help="compute MLM logits at every position instead of only the masked ones")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--tensorboard_dir", default=None, help="also write TensorBoard scalars here")
    p.add_argument("--loss_curve", default=None,
                   help="PNG loss curve written at the end (default: next to --json-summary)")
    add_lamb_arguments(p)
    training.add_compile_arguments(p)
    add_periodic_evaluation_arguments(p)
    add_binning_arguments(p)
    add_masking_arguments(p)
    add_packing_arguments(p)
    add_kernel_arguments(p)
    compat = p.add_argument_group(training.COMPATIBILITY_GROUP)
    compat.add_argument("--bert_model", default="bert-large-uncased", help="a model name; not used")
    compat.add_argument("--num_train_epochs", type=float, default=3.0, help="not used: --max_steps sets the length")
    compat.add_argument("--local_rank", type=int, default=int(os.environ.get("LOCAL_RANK", -1)),
                        help="not used: ranks come from the torchrun/SLURM environment")
    compat.add_argument("--use_env", action="store_true", help="not used: ranks always come from the environment")
    return p.parse_args(argv)


def validate_args(args: argparse.Namespace, env: distributed.DistEnv) -> None:
    if not args.do_train:
        raise InputError("--do_train must be set (as in the original)")
    input_checks.check_at_least_one(args.train_batch_size, "--train_batch_size")
    if args.gradient_accumulation_steps < 1:
        raise InputError(f"--gradient_accumulation_steps must be >= 1, got {args.gradient_accumulation_steps}")
    if args.train_batch_size % args.gradient_accumulation_steps:
        raise InputError(
            f"--train_batch_size {args.train_batch_size} is not divisible by "
            f"--gradient_accumulation_steps {args.gradient_accumulation_steps}"
        )
    if not Path(args.input_dir).is_dir():
        raise InputError(f"--input_dir: not a folder: {args.input_dir}")
    input_checks.check_output_dir(args.output_dir)  # a file there, or a read-only folder: one line before any work
    input_checks.check_output_file(args.json_summary, "--json-summary")
    if args.eval_every_samples and not args.eval_dir:
        raise InputError("--eval_every_samples needs --eval_dir")
    check_finite_settings(args)
    args.max_steps = int(args.max_steps)
    args.log_freq = max(1, int(args.log_freq))
    if not env.distributed or args.gradient_accumulation_steps == 1:
        args.allreduce_post_accumulation = False
        args.allreduce_post_accumulation_fp16 = False


def check_finite_settings(args: argparse.Namespace) -> None:
    """Numbers that would make every loss NaN (a NaN or infinite learning rate) or no batch are refused before
    any work."""
    input_checks.check_number_ranges({  # flag: (value, lowest allowed, lowest is allowed, highest)
        "--learning_rate": (args.learning_rate, 0.0, False, math.inf),
        "--max_steps": (args.max_steps, 1.0, True, math.inf),
        "--warmup_proportion": (args.warmup_proportion, 0.0, True, 1.0),
        "--loss_scale": (args.loss_scale, 0.0, True, math.inf),
        "--init_loss_scale": (float(args.init_loss_scale), 0.0, False, math.inf),
        "--pack_bucket": (args.pack_bucket, 1, True, math.inf),
        "--bin_size": (args.bin_size, 0, True, math.inf),
        "--log_freq": (args.log_freq, 0.0, False, math.inf),
        # Negative values named checkpoints ckpt_-98.pt that resume and pruning never see, or kept everything.
        "--phase1_end_step": (args.phase1_end_step, 0, True, math.inf),
        "--keep_checkpoints": (args.keep_checkpoints, 0, True, math.inf),
    })


def data_position(stored: dict[str, int] | None, output_dir: str) -> DataPosition | None:
    """The stored data position (checked plain counts, see checkpointing.check_resume_entries) or None."""
    if stored is None:
        return None
    unknown = set(stored) - set(DataPosition.__dataclass_fields__)
    if unknown:
        raise InputError(f"{output_dir}: the checkpoint's entry 'data_position' has unknown fields {sorted(unknown)}")
    return DataPosition(**stored)


def warn_if_shards_changed(stored: list[str], files: list[str]) -> None:
    """The data position indexes the shard order of (seed, epoch, shard list): another list resumes training
    on other samples. Adding shards is a reason to do that, so it is a warning, loud and specific, not an error."""
    before, now = {os.path.basename(f) for f in stored}, {os.path.basename(f) for f in files}
    if before == now:
        return
    added, removed = sorted(now - before), sorted(before - now)
    print(f"warning: the shards differ from the checkpoint's ({len(added)} added, {len(removed)} removed: "
          f"{', '.join([*('+' + a for a in added[:2]), *('-' + r for r in removed[:2])])}"
          f"{' ...' if len(added) > 2 or len(removed) > 2 else ''}); the resume is not exact: this epoch's "
          "shard order and position now point to other samples", file=sys.stderr, flush=True)


def final_step(args: argparse.Namespace) -> int:
    """Where this job stops: max_steps, or --steps_this_run when it comes first (both global steps)."""
    return args.max_steps if args.steps_this_run < 0 else min(args.max_steps, args.steps_this_run)


# --------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------


class Trainer:
    """Holds the model, optimizer, data stream and checkpointer; `train()` is the loop."""

    def __init__(self, args: argparse.Namespace, env: distributed.DistEnv, logger: run_log.Logger,
                 tb_writer: Any = None):
        self.args, self.env, self.logger, self.tb_writer = args, env, logger, tb_writer
        self.precision = resolve_precision(args.precision, args.fp16, env.device)
        apply_tf32(self.precision)
        self.config = BertConfig.from_json_file(args.config_file)
        self.unpad = self._choose_unpad()  # before any work: `--unpad on` where it cannot run is an input error
        self.files = list_shards(args.input_dir, "training")
        self.micro_batch = args.train_batch_size // args.gradient_accumulation_steps
        self.seq_len, self.max_pred = check_shard_shapes(self.files, args.max_seq_length, args.max_predictions_per_seq,
                                                         self.config.max_position_embeddings, self.micro_batch)
        masker = masker_from_args(args, self.config.vocab_size, self.max_pred)  # bad flags fail before the model
        self.accum = args.gradient_accumulation_steps
        self.stop_requested = False
        self.divergence = training.DivergenceGuard(self.precision)
        self.loss_finite = True  # the last step's, on every rank
        self.evaluator: Any = None

        distributed.seed_everything(args.seed)  # identical initial weights on every rank
        self.model = BertForPreTraining(self.config).to(env.device)
        if args.checkpoint_activations:
            self.model.enable_activation_checkpointing(True)
        self.criterion = BertPretrainingCriterion(self.config.padded_vocab_size)
        self.optimizer = build_lamb(pretraining_param_groups(self.model), lr=args.learning_rate,
                                    use_nvlamb=args.use_nvlamb, fused=fused_lamb_setting(args.fused_lamb))
        self.scheduler = build_scheduler(args.lr_scheduler, self.optimizer, args.warmup_proportion, args.max_steps)
        self.scaler = training.make_grad_scaler(self.precision, env.device, args.loss_scale,
                                                float(args.init_loss_scale))
        self.checkpointer = Checkpointer(
            args.output_dir, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler,
            env=env, learning_rate=args.learning_rate, phase2=args.phase2, phase1_end_step=args.phase1_end_step,
            keep=args.keep_checkpoints, enabled=not args.skip_checkpoint, logger=logger,
            metadata={"config": self.config.to_dict(), "args": plain_flags(args)},
            allow_missing_optimizer_state=args.allow_missing_optimizer_state,
        )
        distributed.seed_everything(args.seed + env.rank)  # dropout differs per rank, as in the original
        stored = self.checkpointer.restore(resume=args.resume_from_checkpoint, resume_step=args.resume_step,
                                           init_checkpoint=args.init_checkpoint)
        position = data_position(stored, self.checkpointer.output_dir)
        if env.is_main and self.checkpointer.resumed_files:
            warn_if_shards_changed(self.checkpointer.resumed_files, self.files)
        self.stream = ShardStream(self.files, env.rank, env.world_size, self.micro_batch, self.max_pred, args.seed,
                                  position, masker=masker, bin_size=args.bin_size,
                                  limits=TokenLimits(self.config.vocab_size, self.config.type_vocab_size))
        self.flash_attention, self.packed = self.unpad.flash, self.unpad.packed
        self.forward_model = self._wrap_model()
        allreduce = self.allreduce_gradients if args.allreduce_post_accumulation else None
        self.stepper = training.Stepper(self.forward_model, self.optimizer, self.scheduler, self.precision, env.device,
                                        scaler=self.scaler, allreduce=allreduce)
        self.compiled = training.compile_wanted(args.compile, env.device)
        self.loss_fn: torch.nn.Module = training.PretrainingLoss(self.forward_model, self.criterion)
        self.compile_stats = training.CompileStats()
        if self.compiled:
            self.loss_fn = training.compile_module(self.loss_fn, self.compile_stats)
        self.batches = training.DeviceBatches(self.stream, self.prepare_batch, env.device)
        self.flops = FlopsCounter(self.config, self.max_pred if args.dense_seq_output else None)

    @property
    def state(self) -> RunState:
        """The run's counters (step, skipped steps, samples seen): saved and restored with the checkpoints."""
        return self.checkpointer.state

    def _choose_unpad(self) -> UnpadChoice:
        """--unpad resolved for this device, precision and head dim; `auto` says once which path it took and why."""
        head_dim = self.config.hidden_size // self.config.num_attention_heads
        choice = choose_unpad(self.args.unpad, self.args.dense_seq_output,
                              flash_varlen_problem(self.env.device, self.precision, head_dim))
        if self.args.unpad == "auto":
            self.logger.log("PARAMETER", {"unpad": choice.reason})
            if self.env.is_main:
                print(f"--unpad auto: {choice.reason}", flush=True)
        return choice

    def _wrap_model(self) -> torch.nn.Module:
        model: torch.nn.Module = self.model
        if self.env.distributed:
            if self.args.allreduce_post_accumulation:
                training.broadcast_parameters(self.model)
            else:
                model = training.wrap_ddp(self.model, self.env)
        return model

    def prepare_batch(self, batch: list[torch.Tensor]) -> dict[str, Any]:
        """Host-side work on one micro-batch (CPU tensors): FLOP count, masked positions, packing."""
        input_ids, segment_ids, input_mask, labels, nsp_labels = batch
        self.flops.add(input_mask)
        positions = None
        if self.args.dense_seq_output:
            positions, labels = masked_positions_from_labels(labels, self.max_pred)
        if not self.packed:
            return {"input_ids": input_ids, "segment_ids": segment_ids, "input_mask": input_mask,
                    "positions": positions, "labels": labels, "nsp_labels": nsp_labels}
        packed = pack_batch(input_ids, segment_ids, input_mask, positions, self.args.pack_bucket,
                            flash=self.flash_attention)
        return {"input_ids": packed["input_ids"], "segment_ids": packed["segment_ids"],
                "positions": packed["masked_positions"], "labels": labels, "nsp_labels": nsp_labels,
                **packed["packed"].as_fields()}

    # ---- one optimizer step ----------------------------------------------------------------

    def micro_step(self, batch: dict[str, Any], sync: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Forward and backward of one micro-batch already on the device (`training.DeviceBatches`);
        returns (loss, mlm, nsp) as device tensors: nothing here waits for the device."""
        packed = PackedSequences.from_fields(batch)
        if packed is not None and self.compiled:
            mark_token_count_dynamic(batch["input_ids"], batch["segment_ids"], packed.position_ids)

        def losses(_model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, ...]:
            loss, mlm, nsp = self.loss_fn(batch["input_ids"], batch["segment_ids"], batch.get("input_mask"),
                                          batch["positions"], batch["labels"], batch["nsp_labels"], packed)
            # The manual all-reduce path divides once at reduction time; DDP averages over ranks itself.
            scaled = loss if self.args.allreduce_post_accumulation else loss / self.accum
            return scaled, loss, mlm, nsp

        _, loss, mlm, nsp = self.stepper.accumulate(batch, losses, sync=sync)
        return loss, mlm, nsp

    def allreduce_gradients(self) -> None:
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        training.allreduce_post_accumulation(grads, self.env.world_size * self.accum,
                                             self.args.allreduce_post_accumulation_fp16)

    def optimizer_step(self) -> bool:
        """`training.Stepper.update` (all-reduce, scheduler then LAMB: the original's order) and the run's
        counters. False when the GradScaler skipped the update (fp16 overflow). LAMB's own skip of a
        non-finite step happens on the device and is booked later, by `settle_skips`, so that nothing here
        waits for the device."""
        applied = self.stepper.update()
        if applied:
            self.state.global_step += 1
        else:
            self._count_skipped_step()
        return applied

    def _count_skipped_step(self) -> None:
        self.state.skipped_steps += 1
        self.logger.log("PARAMETER", {"loss_scale": self.scaler.get_scale(), "skipped_steps": self.state.skipped_steps})

    def settle_skips(self) -> bool:
        """Book the steps LAMB skipped on the device (non-finite gradients) since the last call: one read
        of the device, made where the loop reads it anyway (log and checkpoint steps, the end). Earlier
        ones count against the divergence limit as if in a row. True when the latest step was skipped."""
        settle = getattr(self.optimizer, "settle", None)  # apex's FusedLAMB skips nothing itself
        late = settle() if settle is not None else 0
        if not late:
            return False
        latest = bool(self.optimizer.last_step_skipped)
        self.state.global_step -= late  # each was counted as applied when it was taken
        for _ in range(late):
            self._count_skipped_step()
        for _ in range(late - latest):  # the latest goes through the loop's own check
            self.divergence.update(False)
        return latest

    # ---- the loop ----------------------------------------------------------------------------

    def train(self, evaluator: Any = None) -> dict[str, float]:
        """Train to `final_step(args)` (or a stop signal, or the evaluator's target accuracy); the run's summary.

        `evaluator`: a PeriodicEvaluator (`should_evaluate(samples, step)`, `evaluate(model)`) or None."""
        args, env = self.args, self.env
        self.evaluator = evaluator
        self.model.train()
        steps_target = final_step(args)
        global_batch = self.micro_batch * self.accum * env.world_size
        attempted = 0  # optimizer steps tried by this job (skipped ones included; none from before a resume)
        window: list[torch.Tensor] = []
        mlm_window: list[torch.Tensor] = []
        history: dict[str, float] = {}
        progress = training.progress_bar(enabled=env.is_main and not args.disable_progress_bar, desc="Iteration",
                                         total=steps_target, initial=self.state.global_step, unit="step")
        train_start = self.train_start_time = time.time()  # also the origin of seconds_to_target
        log_start, log_samples = train_start, 0
        gemm = {"cpu_gemm": cpu_gemm_backend()} if self.env.device.type == "cpu" else {}
        self.logger.log("PARAMETER", {"train_start": True, "batch_size_per_gpu": self.micro_batch,
                                      "learning_rate": args.learning_rate, "precision": self.precision, **gemm})
        while self.state.global_step < steps_target and not self.stop_requested:
            losses = [self.micro_step(batch, sync=(i == self.accum - 1))
                      for i, batch in enumerate(self.batches.step(self.accum))]
            applied = self.optimizer_step()
            if applied and self._reads_device_now(steps_target) and self.settle_skips():
                applied = False
            attempted += 1
            self.state.samples_seen += global_batch
            log_samples += global_batch
            step_loss = torch.stack([x[0] for x in losses]).mean()
            self._stop_if_diverged(applied, step_loss)
            window.append(step_loss)
            mlm_window.append(torch.stack([x[1] for x in losses]).mean())
            if progress is not None:
                progress.update(1 if applied else 0)
            if applied and self.state.global_step % args.log_freq == 0:
                elapsed = time.time() - log_start
                history = self._log_step(window, mlm_window, step_loss, log_samples / max(elapsed, 1e-9), elapsed)
                window, mlm_window, log_start, log_samples = [], [], time.time(), 0
            if self._evaluation_due() and self._evaluate():
                break
            every = args.num_steps_per_checkpoint
            if applied and every > 0 and self.state.global_step % every == 0:
                self.save_checkpoint()
            self.stop_requested = training.any_rank(self.stop_requested, self.env)  # all stop at one step
        self.settle_skips()
        raw_time = time.time() - train_start
        if progress is not None:
            progress.close()
        if window:
            history = self._log_step(window, mlm_window, window[-1], 0.0)
        self.save_checkpoint(unless_current=True)
        return {
            "raw_train_time": raw_time,
            "training_sequences_per_second": attempted * global_batch / max(raw_time, 1e-9),
            "final_loss": distributed.all_reduce_mean(history.get("average_loss", float("nan")), env.device),
            "final_mlm_loss": history.get("mlm_loss", float("nan")),
            "global_step": self.state.global_step,
            "skipped_steps": self.state.skipped_steps,
            # A signal that came with the last step stopped nothing: the run is finished.
            "stopped_by_signal": self.stop_requested and self.state.global_step < steps_target,
        }

    def _reads_device_now(self, steps_target: int) -> bool:
        """Whether this step logs, checkpoints or ends the run (the loop reads the device then anyway)."""
        step, every = self.state.global_step, self.args.num_steps_per_checkpoint
        return step % self.args.log_freq == 0 or (every > 0 and step % every == 0) or step >= steps_target

    def _stop_if_diverged(self, applied: bool, step_loss: torch.Tensor) -> None:
        """Stop with an error rather than skip forever or train on a NaN loss. The loss is this rank's: every
        rank checks it here, and `any_rank` makes all stop together (the gradients are all-reduced already)."""
        self.loss_finite = not training.any_rank(not bool(torch.isfinite(step_loss)), self.env)
        if self.divergence.update(applied, self.loss_finite):
            what = "non-finite gradients" if not applied else "a non-finite loss"
            raise training.TrainingDiverged(
                f"training diverged: {self.divergence.in_a_row} optimizer steps in a row had {what} "
                f"({self.precision}, last loss {float(step_loss)}) at step {self.state.global_step}; stopped without "
                f"a checkpoint (last sane checkpoint: {self.checkpointer.last_sane_checkpoint()}); "
                "check the learning rate, the shards' masked-LM labels and the init checkpoint's weights")

    def save_checkpoint(self, unless_current: bool = False) -> None:
        if not self.loss_finite:  # the state that gave a NaN loss is no state to resume from
            raise training.TrainingDiverged(
                f"the loss is not finite at step {self.state.global_step} ({self.precision}); no checkpoint written "
                f"(last sane checkpoint: {self.checkpointer.last_sane_checkpoint()})")
        position = asdict(self.stream.position)
        files = epoch_file_order(self.files, position["epoch"], self.args.seed)
        if unless_current:
            self.checkpointer.save_unless_current(position, files)
        else:
            self.checkpointer.save(position, files)

    def _evaluation_due(self) -> bool:
        return self.evaluator is not None and self.evaluator.should_evaluate(self.state.samples_seen,
                                                                             self.state.global_step)

    def _evaluate(self) -> bool:
        """Evaluate and log at the current step; True when the target MLM accuracy is reached (stop training)."""
        samples_seen = self.state.samples_seen
        result = self.evaluator.evaluate(self.model)
        record = {**result.metrics(), "samples_seen": samples_seen, "eval_time": result.seconds}
        self._log(record, prefix="eval")
        target = self.args.target_mlm_accuracy
        if not (target > 0 and result.mlm_accuracy >= target):
            return False
        seconds = time.time() - self.train_start_time
        self.logger.log(self._log_step_key(), {"target_mlm_accuracy": target, "samples_to_target": samples_seen,
                                               "seconds_to_target": seconds})
        if self.env.is_main:
            print(f"target MLM accuracy {target} reached ({result.mlm_accuracy:.4f}) after "
                  f"{samples_seen} samples, {seconds:.1f} s: stopping", flush=True)
        return True

    # ---- logging -----------------------------------------------------------------------------

    def _log_step(self, window, mlm_window, step_loss, seq_per_s: float, seconds: float = 0.0) -> dict[str, float]:
        """Log the window's losses; MFU ("mfu": on real tokens, "mfu_padded": as the padded layout
        computes) over the `seconds` the window took, on CUDA with a known peak."""
        record = {
            "average_loss": torch.stack(window).mean().item(),
            "step_loss": float(step_loss),
            "mlm_loss": torch.stack(mlm_window).mean().item(),
            "learning_rate": self.optimizer.param_groups[0]["lr"],
            "loss_scale": self.scaler.get_scale() if self.scaler.is_enabled() else 1.0,
            "seq_per_s": seq_per_s,
        }
        work = self.flops.take()
        for key, flops in (("mfu", work.real_flops), ("mfu_padded", work.padded_flops)):
            mfu = model_flops_utilization(flops, seconds, self.env.device, self.precision)
            if mfu is not None:
                record[key] = mfu
        self._log(record, prefix="train")
        return record

    def _log_step_key(self) -> tuple[int, int]:
        return (self.stream.position.epoch, self.checkpointer.name_step())

    def _log(self, record: dict[str, float], prefix: str) -> None:
        self.logger.log(self._log_step_key(), record)
        if self.tb_writer is not None:
            for k, v in record.items():
                self.tb_writer.add_scalar(f"{prefix}/{k}", v, self.checkpointer.name_step())

    def request_stop(self, signum: int) -> None:
        """SIGTERM / SIGUSR1 (SLURM preemption): finish the current step, save, exit cleanly."""
        self.stop_requested = True
        print(f"received signal {signum}: saving a checkpoint and stopping", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def build_evaluator(args: argparse.Namespace, trainer: Trainer) -> Any:
    if not args.eval_dir:
        return None
    return PeriodicEvaluator.from_args(args, trainer.config, trainer.env, trainer.precision,
                                       samples_seen=trainer.state.samples_seen, final_step=final_step(args))


def main(argv: list[str] | None = None) -> dict[str, float]:
    e2e_start = time.time()
    args = parse_args(argv)
    env = distributed.init_distributed(args.device)
    try:
        validate_args(args, env)
        configure_kernels(args)
        os.makedirs(args.output_dir, exist_ok=True)
        if env.is_main:  # held for the run: a second run on this folder stops here
            training.lock_output_dir(args.output_dir)
        logger = run_log.Logger(args.json_summary, enabled=env.is_main)
        logger.log("PARAMETER", {"Config": [str(args)], "SEED": args.seed})
        trainer = Trainer(args, env, logger, training.tensorboard_writer(args.tensorboard_dir, env.is_main))
        if trainer.state.global_step >= final_step(args):
            return nothing_to_do(args, trainer, logger)
        training.install_stop_handlers(trainer.request_stop)
        try:
            summary = trainer.train(build_evaluator(args, trainer))
        finally:  # also on an error: a shard load still running in its thread can abort the exit
            trainer.stream.close()
        summary["e2e_train_time"] = time.time() - e2e_start
        logger.log((), {k: summary[k] for k in ("e2e_train_time", "training_sequences_per_second", "final_loss",
                                                "raw_train_time")})
        if env.is_main:
            finish_outputs(args, trainer.checkpointer.latest, summary)
        logger.close()
        return summary
    finally:
        training.release_output_locks()
        distributed.cleanup_distributed()


def nothing_to_do(args: argparse.Namespace, trainer: Trainer, logger: run_log.Logger) -> dict[str, Any]:
    """A resumed run that is already at its final step: say so and change nothing (no NaN "final loss")."""
    trainer.stream.close()
    logger.close()
    step = trainer.state.global_step
    if trainer.env.is_main:
        print(f"nothing to do: {args.output_dir} is already at step {step} (this run ends at step "
              f"{final_step(args)}); no training, no new checkpoint", flush=True)
    return {"global_step": step, "skipped_steps": trainer.state.skipped_steps, "stopped_by_signal": False,
            "nothing_to_do": True}


def finish_outputs(args: argparse.Namespace, latest_checkpoint: str | None, summary: dict[str, Any]) -> None:
    png = args.loss_curve or os.path.splitext(args.json_summary)[0] + "_loss.png"
    try:
        loss_curve.plot_loss_curve(args.json_summary, png)
        summary["loss_curve"] = png
    except Exception as exc:  # noqa: BLE001 - a plot must never fail a finished training run
        print(f"warning: could not draw the loss curve: {exc}", file=sys.stderr)
    print(f"final_loss {summary['final_loss']:.4f} after {summary['global_step']} steps; "
          f"{summary['training_sequences_per_second']:.1f} sequences/s; "
          f"checkpoint {latest_checkpoint or 'none'}; loss curve {summary.get('loss_curve', 'none')}", flush=True)
    if math.isnan(summary["final_loss"]):
        print("warning: final loss is NaN", file=sys.stderr)


# A run stopped by SIGTERM/SIGUSR1 before its final step saved a checkpoint and exits with this code
# (EX_TEMPFAIL of sysexits.h: "try again later"), so that wrappers neither mistake it for a finished
# run (0) nor for an error (1, 2): scripts/run_pretraining.sh stops before phase 2, run.sub requeues.
EXIT_STOPPED = 75


def cli(argv: list[str] | None = None) -> None:
    """The command line: `main`, then exit EXIT_STOPPED when a signal stopped the run before its end."""
    summary = main(argv)
    if summary.get("stopped_by_signal"):
        print(f"stopped by a signal at step {summary['global_step']} before the final step, after its checkpoint "
              f"(none with --skip_checkpoint); exit code {EXIT_STOPPED}: resume with --resume_from_checkpoint",
              file=sys.stderr, flush=True)
        raise SystemExit(EXIT_STOPPED)


if __name__ == "__main__":
    input_checks.run_main(cli)
