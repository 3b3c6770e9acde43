"""One LoRA fine-tuning run, top to bottom: load → prepare → evaluate (before) → train → DPO → evaluate (after)
→ save.

:class:`LoraRecipe` holds the run's state; its steps are methods, in the order :meth:`LoraRecipe.run` calls them.
Everything that can refuse the run (settings, snapshot, base model, chat template, an existing run in ``--out``)
is checked in :meth:`LoraRecipe.setup`, before anything is written, so a refused run leaves no trace.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import resource
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, EarlyStoppingCallback, GenerationConfig, TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.utils import is_flash_attn_2_available, is_liger_kernel_available  # type: ignore[attr-defined]
from trl import SFTConfig, SFTTrainer  # type: ignore[attr-defined]

from data.conversation import Conversation
from data.general_prompts import GeneralPrompts
from data.snapshot import Snapshot, SnapshotError, read_snapshot
from trainer import report
from trainer.config import TrainConfig, TrainingInterrupted, TrainingRefused
from trainer.dpo import run_dpo
from trainer.evaluate import Answer, answer_eval, answer_questions, answer_table
from trainer.metrics import METRICS_FILE, EvalLossPoint, ExampleCounts, ReplayCounts, TrainLossPoint, TrainMetrics
from trainer.prepare import ChatFormat, PreparedSplit, end_of_turn_tokens
from trainer.progress import DoneEvent, ProgressReporter
from trainer.record import RunRecord, read_run
from trainer.replay import base_answers, replay_count, replay_prompt_set
from trainer.replay import conversations as replay_conversations
from trainer.retention import general_prompt_set, measure_base, measure_trained

log = logging.getLogger("loraloop.trainer")

CHECKPOINTS = "checkpoints"
# Files a finished or started run leaves in --out; any of them there means "a run lives here".
RUN_FILES = ("config.yaml", "adapter_config.json", METRICS_FILE, CHECKPOINTS)
_plot_loss = report.plot_loss  # its name here before it moved to trainer/report.py (tests import it)


@dataclass(frozen=True)
class TrainRequest:
    snapshot: Path
    base: str
    out: Path
    config: TrainConfig
    resume: bool = False
    json_progress: bool = False


def train(request: TrainRequest) -> dict[str, Any]:
    """Run the recipe and return metrics.json's content. Raises TrainingRefused (nothing written) for bad input."""
    return LoraRecipe(request).run().to_dict()


class LoraRecipe:
    """One run's recipe (after torchtune's recipe classes): the state its steps share, and the steps in order."""

    # setup: what the run trains, on what, from where
    cuda: bool
    resume_from: Path | None
    snapshot: Snapshot
    base_dir: Path
    fmt: ChatFormat
    train_split: PreparedSplit
    eval_split: PreparedSplit
    general: GeneralPrompts | None  # retention's prompt set (trainer/retention.py)
    replay: GeneralPrompts | None  # replay's prompt set (trainer/replay.py)
    model: Any  # the base model; from add_lora on, the PeftModel around it
    # the trainer and its data
    epochs: int
    replayed: dict[str, Any] | None  # the base's answers to the replay prompts (replay.json)
    replay_split: PreparedSplit
    trainer: SFTTrainer
    # evaluation before and after; training's outcome
    eval_convs: list[Conversation]
    probe_questions: list[str]
    before: dict[str, Any]  # before.json: the base's eval loss, answers, probes (and retention)
    result: Any  # SFTTrainer.train's TrainOutput
    history: list[dict[str, Any]]  # the SFT stage's log (before the final evaluation adds to it)
    sft_tokens_at_start: int
    train_dtype: str | None
    dpo: dict[str, Any] | None
    after_eval: dict[str, float]
    after_answers: list[Answer]
    after_probes: list[str]
    retention: dict[str, Any] | None

    def __init__(self, request: TrainRequest) -> None:
        self.request, self.out, self.cfg = request, request.out, request.config
        self.progress = ProgressReporter(json_lines=request.json_progress)
        self.t_start = time.monotonic()

    @property
    def has_eval(self) -> bool:
        return bool(self.eval_split.examples)

    def run(self) -> TrainMetrics:
        """Every step, in order; the run's metrics (written to metrics.json too)."""
        self.setup()
        self.open_run_dir()
        file_log = _log_to(self.out / "train.log")
        try:
            with contextlib.redirect_stdout(sys.stderr):  # stdout is reserved for progress JSON
                self.add_lora()
                self.mix_replay()
                self.build_trainer()
                self.evaluate_before()
                self.train()
                self.train_preferences()
                self.evaluate_after()
                metrics = self.save()
            self.progress.emit(DoneEvent(message=report.summary(self.out, metrics), out=str(self.out),
                                         eval_loss_before=metrics.eval_loss_before,
                                         eval_loss_after=metrics.eval_loss_after,
                                         wall_time_s=metrics.wall_time_s or 0.0))
            return metrics
        except KeyboardInterrupt:  # a second Ctrl-C, or one outside the training loop: the last checkpoint, if any
            checkpoint = _last_checkpoint(self.out)
            saved = f"the last checkpoint is {checkpoint}" if checkpoint else "no checkpoint was saved yet"
            log.info("interrupted: %s", saved)
            raise TrainingInterrupted(f"stopped; {saved}", checkpoint) from None
        finally:
            self.progress.close()
            logging.getLogger().removeHandler(file_log)
            file_log.close()

    def setup(self) -> None:
        """Everything that can refuse the run, before anything is written: settings, an existing run in --out,
        the snapshot, the base model and its chat template, the prompt sets."""
        request, out = self.request, self.out
        self.cuda = torch.cuda.is_available()
        self.cfg.check(self.cuda)
        stored = _previous_run(out, request.resume)
        self.resume_from = _resume_checkpoint(out) if request.resume else None
        if stored is not None:
            self.cfg = stored  # a resumed run keeps the configuration it started with
        cfg = self.cfg
        try:
            self.snapshot = read_snapshot(request.snapshot)
        except SnapshotError as exc:
            raise TrainingRefused(f"snapshot cannot be read: {exc}") from None
        if not self.snapshot.train:
            raise TrainingRefused(f"snapshot {request.snapshot} has no training examples")
        if stored is not None:
            try:
                started = (read_run(out) or RunRecord()).snapshot_sha256
            except ValueError as exc:
                raise TrainingRefused(f"--resume: {exc}") from None
            if started and started != self.snapshot.sha256:
                raise TrainingRefused(f"--resume: the run in {out} trained on snapshot {started[:12]}, not on "
                                      f"{request.snapshot} ({self.snapshot.sha256[:12]})")
        self.base_dir = resolve_base(request.base)
        tokenizer = AutoTokenizer.from_pretrained(self.base_dir)
        generation_config = _generation_config(self.base_dir)
        self.fmt = ChatFormat(tokenizer, cfg.template_text(), cfg.system_prompt,
                              end_of_turn_tokens(tokenizer, generation_config))
        _set_distinct_pad(tokenizer, self.fmt.end_of_turn)
        self.train_split = self.fmt.prepare(self.snapshot.train, cfg.max_length)
        self.eval_split = self.fmt.prepare(self.snapshot.eval, cfg.max_length)
        if not self.train_split.examples:
            raise TrainingRefused(f"no training example fits in max_length {cfg.max_length} with an answer left to "
                                  "learn")
        if shortened := _shortened(self.train_split, self.eval_split, cfg.max_length):
            self.progress.console.print(f"[yellow]note:[/] {shortened}", highlight=False, soft_wrap=True)
        self.general = general_prompt_set(cfg)  # a bad prompt set is refused here, before anything is written
        self.replay = replay_prompt_set(cfg)
        self.model = load_base_model(self.base_dir, cfg, self.cuda)
        _refuse_embedding_targets(self.model, cfg)

    def open_run_dir(self) -> None:
        """The run directory: the configuration and the run record (trainer/record.py) the later steps read."""
        request, cfg, fmt = self.request, self.cfg, self.fmt
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
        RunRecord(base=request.base, base_dir=self.base_dir.resolve(), snapshot=str(request.snapshot),
                  snapshot_sha256=self.snapshot.sha256, chat_template=fmt.template, system_prompt=cfg.system_prompt,
                  end_of_turn=fmt.end_of_turn,
                  # How the answers' reasoning parts were trained: the base's convention.
                  reasoning=fmt.reasoning_style if snapshot_has_reasoning(self.snapshot) else None).write(self.out)

    def add_lora(self) -> None:
        """Seeds and threads, then LoRA on every linear projection of the base."""
        cfg, train_split, eval_split = self.cfg, self.train_split, self.eval_split
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        if not self.cuda:
            torch.set_num_threads(cpu_threads(cfg))
        n_train = len(train_split.examples)
        self.epochs = cfg.resolved_epochs(n_train)
        log.info("train %d examples (%d tokens, %d trained, %d truncated, %d dropped), eval %d; %d epochs",
                 n_train, train_split.tokens, train_split.trained_tokens, train_split.truncated, train_split.dropped,
                 len(eval_split.examples), self.epochs)
        skipped = train_split.unrenderable + eval_split.unrenderable
        if skipped:
            log.warning("%d conversations skipped: the chat template drops their tool calls", skipped)
        self.model = get_peft_model(self.model, lora_config(cfg))
        trainable, total = self.model.get_nb_trainable_parameters()
        log.info("LoRA r=%d alpha=%d: %d trainable of %d parameters", cfg.lora_r, int(cfg.lora_alpha), trainable,
                 total)

    def mix_replay(self) -> None:
        """Replay: the base's own general answers train beside the pairs (trainer/replay.py); answered once, kept
        in replay.json for a resumed run."""
        cfg, fmt, model, replay = self.cfg, self.fmt, self.model, self.replay
        n_train = len(self.train_split.examples)
        replayed = _load_json(self.out / "replay.json") if replay is not None else None
        if replay is not None and replayed is None:
            self.progress.phase("replay", "the base answers the replay prompts")
            with model.disable_adapter():
                replayed = base_answers(model, fmt, replay, replay_count(cfg, n_train, len(replay.prompts)),
                                        cfg.replay_max_new_tokens)
            (self.out / "replay.json").write_text(json.dumps(replayed, indent=2, ensure_ascii=False),
                                                  encoding="utf-8")
        self.replayed = replayed
        self.replay_split = fmt.prepare(replay_conversations(replayed, fmt.tokenizer) if replayed else [],
                                        cfg.max_length)
        if self.replay_split.examples:
            log.info("replay: %d general answers of the base (%d tokens) mixed into %d taught examples",
                     len(self.replay_split.examples), self.replay_split.tokens, n_train)

    def build_trainer(self) -> None:
        """TRL's SFTTrainer on the taught examples (and replay), evaluating on the held-out split."""
        cfg, eval_split = self.cfg, self.eval_split
        has_eval = bool(eval_split.examples)
        args = sft_config(cfg, self.out / CHECKPOINTS, self.epochs, self.cuda, has_eval, self.model)
        callbacks: list[Any] = [self.progress]
        if has_eval and cfg.early_stopping_patience:
            callbacks.append(EarlyStoppingCallback(cfg.early_stopping_patience, cfg.early_stopping_threshold))
        self.trainer = SFTTrainer(
            model=self.model, args=args, processing_class=self.fmt.tokenizer,
            train_dataset=Dataset.from_list(self.train_split.examples + self.replay_split.examples),
            eval_dataset=Dataset.from_list(eval_split.examples) if has_eval else None,
            callbacks=callbacks,
        )
        self.trainer.remove_callback(PrinterCallback)  # it prints every log dict on stdout
        self.trainer.remove_callback(ProgressCallback)

    def evaluate_before(self) -> None:
        """The base model (the adapter off): eval loss, generated eval answers, probes, retention's base answers.
        Kept in before.json: a resumed run does not measure them again."""
        cfg, fmt, model = self.cfg, self.fmt, self.model
        self.eval_convs = self.snapshot.eval[: cfg.eval_generate]
        self.probe_questions = list(cfg.probes) + [_last_user(c) for c in self.snapshot.eval[: cfg.probe_eval_samples]]
        before = _load_json(self.out / "before.json")
        if before is None:
            self.progress.phase("evaluate-before", "evaluating the base model")
            with model.disable_adapter():
                before = {
                    "eval": self.trainer.evaluate() if self.has_eval else {},
                    "answers": [asdict(a) for a in answer_eval(model, fmt, self.eval_convs, cfg.max_new_tokens)],
                    "probes": answer_questions(model, fmt, self.probe_questions, cfg.max_new_tokens),
                }
        if self.general is not None and not before.get("retention"):  # also a resumed run that started without it
            with model.disable_adapter():  # the base answers general prompts, scored under itself (retention.py)
                before["retention"] = measure_base(model, fmt, self.general, cfg.retention_prompts,
                                                   cfg.retention_max_new_tokens, cfg.max_length)
        (self.out / "before.json").write_text(json.dumps(before, indent=2, ensure_ascii=False), encoding="utf-8")
        self.before = before

    def train(self) -> None:
        """SFT, resuming from the last checkpoint if asked; Ctrl-C saves a checkpoint and raises TrainingInterrupted."""
        trainer, progress, resume_from = self.trainer, self.progress, self.resume_from
        progress.phase("train", f"training {len(self.train_split.examples)} examples for {self.epochs} epochs "
                                f"({_batching(self.cfg)})")
        _reset_peak_memory(self.cuda)
        if resume_from is not None:
            step = _checkpoint_step(resume_from)
            log.info("resuming from %s (step %d)", resume_from, step)
            progress.console.print(f"resuming from {resume_from} (step {step})", highlight=False, soft_wrap=True)
        interrupt = InterruptToCheckpoint(progress.console)
        trainer.add_callback(interrupt)
        dtype = ComputeDtype(self.model)
        with interrupt.catching_sigint(), dtype.recording():
            self.result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        if interrupt.requested:
            checkpoint = self.out / CHECKPOINTS / f"checkpoint-{trainer.state.global_step}"
            log.info("interrupted at step %d: checkpoint %s", trainer.state.global_step, checkpoint)
            raise TrainingInterrupted(f"at step {trainer.state.global_step} of {trainer.state.max_steps}: "
                                      f"checkpoint saved in {checkpoint}", checkpoint)
        self.train_dtype = dtype.seen
        self.history = list(trainer.state.log_history)  # before the final evaluation adds to it
        self.sft_tokens_at_start = progress.tokens_at_start  # the DPO stage's on_train_begin resets it

    def train_preferences(self) -> None:
        """Preferences (optional): DPO continues the SFT adapter, the SFT model as its reference (trainer/dpo.py)."""
        self.dpo = (run_dpo(self.model, self.fmt, self.snapshot, self.cfg, self.out, self.cuda, self.progress)
                    if self.cfg.dpo.enabled else None)

    def evaluate_after(self) -> None:
        """The same evaluation as before, on the trained adapter (the best weights when those are kept)."""
        cfg, fmt, model = self.cfg, self.fmt, self.model
        self.progress.phase("evaluate-after", "evaluating the trained adapter")
        self.after_eval = self.trainer.evaluate() if self.has_eval else {}
        self.after_answers = answer_eval(model, fmt, self.eval_convs, cfg.max_new_tokens)
        self.after_probes = answer_questions(model, fmt, self.probe_questions, cfg.max_new_tokens)
        self.retention = (measure_trained(model, fmt, self.before["retention"], cfg.retention_samples,
                                          cfg.max_length)
                          if self.general is not None else None)

    def save(self) -> TrainMetrics:
        """The adapter, probes.json, loss.png, metrics.json and the model card (README.md)."""
        out, request, before = self.out, self.request, self.before
        self.progress.phase("save", f"saving the adapter to {out}")
        self.model.save_pretrained(out)
        probes = [{"question": q, "before": b, "after": a}
                  for q, b, a in zip(self.probe_questions, before["probes"], self.after_probes, strict=True)]
        (out / "probes.json").write_text(json.dumps(probes, indent=2, ensure_ascii=False), encoding="utf-8")
        train_curve = [{"step": h["step"], "epoch": h.get("epoch"), "loss": h["loss"]}
                       for h in self.history if "loss" in h]
        eval_curve = [{"step": 0, "epoch": 0.0, "eval_loss": before["eval"].get("eval_loss")}] if self.has_eval else []
        eval_curve += [{"step": h["step"], "epoch": h.get("epoch"), "eval_loss": h["eval_loss"]}
                       for h in self.history if "eval_loss" in h and h["step"] > 0]
        report.plot_loss(train_curve, eval_curve, out / "loss.png",
                         title=f"{out.resolve().name}: loss ({request.base})", dpo=self.dpo)
        metrics = self.metrics(train_curve, eval_curve)
        metrics.write(out)
        # PEFT's save_pretrained leaves an empty model card template: replace it with what this run was.
        (out / "README.md").write_text(report.model_card(request.base, out, self.cfg, self.snapshot.manifest,
                                                         metrics), encoding="utf-8")
        return metrics

    def metrics(self, train_curve: list[dict[str, Any]], eval_curve: list[dict[str, Any]]) -> TrainMetrics:
        """metrics.json's record of this run (trainer/metrics.py)."""
        cfg, state, train_split, eval_split = self.cfg, self.trainer.state, self.train_split, self.eval_split
        scores, table = answer_table([Answer(**a) for a in self.before["answers"]], self.after_answers)
        tokens_seen = int(state.num_input_tokens_seen or 0)
        tokens_this_run = tokens_seen - self.sft_tokens_at_start  # a resumed run only timed its own part
        runtime = self.result.metrics.get("train_runtime") or 0.0
        replay_split, replayed = self.replay_split, self.replayed
        return TrainMetrics(
            base=self.request.base,
            snapshot_sha256=self.snapshot.sha256,
            examples=ExampleCounts(train=len(train_split.examples), eval=len(eval_split.examples),
                                   truncated=train_split.truncated + eval_split.truncated,
                                   dropped=train_split.dropped + eval_split.dropped,
                                   unrenderable=train_split.unrenderable + eval_split.unrenderable),
            epochs=self.epochs,
            steps=state.global_step,
            batching=_batching(cfg),
            device="cuda" if self.cuda else "cpu",
            train_dtype=self.train_dtype,  # what the adapted layers computed in while training (bfloat16, float32 …)
            eval_loss_before=self.before["eval"].get("eval_loss"),
            eval_loss_after=self.after_eval.get("eval_loss"),
            token_accuracy_before=self.before["eval"].get("eval_mean_token_accuracy"),
            token_accuracy_after=self.after_eval.get("eval_mean_token_accuracy"),
            answers=scores,
            train_loss=self.result.metrics.get("train_loss"),
            train_loss_curve=[TrainLossPoint(**p) for p in train_curve],
            eval_loss_curve=[EvalLossPoint(**p) for p in eval_curve],
            best_checkpoint=state.best_model_checkpoint,
            tokens_seen=tokens_seen,
            train_runtime_s=round(runtime, 3),
            tokens_per_s=round(tokens_this_run / runtime, 1) if runtime else None,
            peak_memory_bytes=_peak_memory(self.cuda),
            eval_table=table,
            replay=(ReplayCounts(set=replayed["set"], sha256=replayed["sha256"], ratio=cfg.replay_ratio,
                                 examples=len(replay_split.examples), tokens=replay_split.tokens)
                    if replayed else None),
            dpo=self.dpo,
            retention=self.retention,
            wall_time_s=round(time.monotonic() - self.t_start, 3),
        )


class InterruptToCheckpoint(TrainerCallback):
    """Ctrl-C during training: the step in progress finishes, a checkpoint is saved and training stops (the
    recipe then raises TrainingInterrupted). A second Ctrl-C interrupts at once, as Python's own would."""

    def __init__(self, console: Any) -> None:
        self.console = console
        self.requested = False

    @contextlib.contextmanager
    def catching_sigint(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # signals reach the main thread only; the caller's own handling stays in place
            return
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)
        self.console.print("[yellow]interrupt:[/] saving a checkpoint after this step (Ctrl-C again to stop without "
                           "one)", highlight=False, soft_wrap=True)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.requested:
            control.should_save = True
            control.should_training_stop = True
        return control


class ComputeDtype:
    """The dtype a LoRA-adapted layer's output actually has during training (autocast and QLoRA included), as
    metrics.json's ``train_dtype``: what the run trained in, not what the GPU could do."""

    def __init__(self, model: Any) -> None:
        self.layer = next((m for name, m in model.named_modules() if name.endswith("lora_A.default")), None)
        self.seen: str | None = None

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        if self.layer is None:
            yield
            return
        handle = self.layer.register_forward_hook(self._record)
        try:
            yield
        finally:
            handle.remove()

    def _record(self, module: Any, inputs: Any, output: Any) -> None:
        if self.seen is None and module.training and isinstance(output, torch.Tensor):
            self.seen = str(output.dtype).removeprefix("torch.")


def _shortened(train_split: PreparedSplit, eval_split: PreparedSplit, max_length: int) -> str | None:
    """The console line for examples preparation truncated or dropped (train.log has the counts too), or None."""
    truncated, dropped = train_split.truncated + eval_split.truncated, train_split.dropped + eval_split.dropped
    if not truncated and not dropped:
        return None
    longest = max(train_split.longest, eval_split.longest)
    total = len(train_split.examples) + len(eval_split.examples) + dropped
    return (f"{truncated} of {total} examples truncated to max_length {max_length} tokens, {dropped} dropped (nothing "
            f"left to learn once cut); the longest is {longest} tokens: raise --max-length to keep them whole")


def cpu_threads(cfg: TrainConfig) -> int:
    """torch's CPU threads: the configured number, else the cores not already busy (one at least).

    torch's own default (every core) oversubscribes a loaded machine: two threads on a busy 2-core host ran 8x
    slower than one (SmolLM2-135M, 10 generation steps: 63.8 s against 7.8 s)."""
    if cfg.cpu_threads:
        return cfg.cpu_threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(cores, math.floor(cores - busy + 0.5)))


# ---- the two configurations the recipe (and bench/bench_train.py) hand to PEFT and TRL -----------------
# transformers 5.2x renamed gradient_checkpointing to activation_checkpointing (the old name now warns); older 5.x
# (the GPU hosts' 5.17) knows only the old name. Chosen by the field that exists, not by a version number.
_CHECKPOINTING_ARG = ("activation_checkpointing" if "activation_checkpointing" in SFTConfig.__dataclass_fields__
                      else "gradient_checkpointing")


def lora_config(cfg: TrainConfig) -> LoraConfig:
    """Plain LoRA that llama.cpp can apply: no DoRA, no rsLoRA, no fully trained modules."""
    return LoraConfig(
        r=cfg.lora_r, lora_alpha=int(cfg.lora_alpha), lora_dropout=cfg.lora_dropout, bias="none",
        target_modules=cfg.target_modules, task_type="CAUSAL_LM", use_dora=False, use_rslora=False,
    )


def sft_config(cfg: TrainConfig, output_dir: Path, epochs: int, cuda: bool, has_eval: bool, model: Any) -> SFTConfig:
    """TRL's SFTConfig for our prepared (tokenised, labelled, truncated) datasets."""
    eval_every = "steps" if cfg.eval_steps else "epoch"
    batching = _batching(cfg)
    checkpointing: dict[str, Any] = {_CHECKPOINTING_ARG: _gradient_checkpointing(cfg, cuda, model)}
    return SFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=epochs,
        max_steps=cfg.max_steps or -1,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # a fraction below 1 is a ratio of the total steps
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=cuda and torch.cuda.is_bf16_supported(),
        fp16=cuda and not torch.cuda.is_bf16_supported(),
        use_cpu=not cuda,
        **checkpointing,
        max_length=cfg.max_length if batching == "packing" else None,  # prepare() already truncated
        padding_free=batching == "padding_free",
        packing=batching == "packing",
        eval_strategy=eval_every if has_eval else "no",
        save_strategy=eval_every,
        eval_steps=cfg.eval_steps,
        save_steps=cfg.eval_steps,  # type: ignore[arg-type]  # None when saving each epoch
        save_total_limit=cfg.save_total_limit,
        load_best_model_at_end=has_eval and cfg.load_best_at_end,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_steps=1,
        logging_first_step=True,
        report_to="none",
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
        shuffle_dataset=True,
        # Liger's kernels are applied by load_base_model (TRL 1.16 deprecates this flag for Hub-loaded kernels).
        use_liger_kernel=False,
    )


def snapshot_has_reasoning(snapshot: Any) -> bool:
    return any(c.has_reasoning for c in (*snapshot.train, *snapshot.eval))


# ---- loading ---------------------------------------------------------------------------------------
def resolve_base(base: str) -> Path:
    """A local model directory, or a Hugging Face id found in the cache (downloaded unless HF_HUB_OFFLINE=1)."""
    path = Path(base).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TrainingRefused(f"base model directory {path} has no config.json: not a Hugging Face model")
        return path
    if path.exists() or base.startswith((".", "/", "~")) or base.count("/") != 1:
        raise TrainingRefused(f"base model {base!r} is neither a model directory nor a Hugging Face id (org/name)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    try:
        return Path(snapshot_download(base, local_files_only=offline,
                                      allow_patterns=["*.json", "*.safetensors", "*.model", "*.jinja", "*.txt"]))
    except LocalEntryNotFoundError:
        # Raised offline by choice (HF_HUB_OFFLINE) and also when the Hub cannot be reached at all: name the real one.
        if offline:
            raise TrainingRefused(f"base model {base!r} is not in the Hugging Face cache and HF_HUB_OFFLINE=1 "
                                  "forbids downloading it") from None
        raise TrainingRefused(f"base model {base!r} is not in the Hugging Face cache and the Hub could not be "
                              "reached (no network?): download it once with network access, or pass a local "
                              "directory") from None
    except (HfHubHTTPError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrainingRefused(f"base model {base!r} could not be fetched: {first}") from None


def _generation_config(base_dir: Path) -> GenerationConfig | None:
    try:
        return GenerationConfig.from_pretrained(base_dir)
    except OSError:
        return None


def load_base_model(base_dir: Path, cfg: TrainConfig, cuda: bool) -> Any:
    """The base model for training: bf16/fp16 on CUDA (4-bit NF4 with QLoRA), fp32 on CPU, KV cache off.

    The cache must be off: with a cache object transformers skips detecting padding-free (packed) batches
    and lets examples attend to each other (measured: loss off by 0.2 on the tiny model).
    """
    kwargs: dict[str, Any] = {}
    if cuda:
        kwargs["dtype"] = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        kwargs["device_map"] = {"": 0}
        # flash-attn's varlen kernels take padding-free batches without any mask; without the package, torch's
        # SDPA (transformers builds a block-diagonal mask from the position ids of a padding-free batch).
        kwargs["attn_implementation"] = "flash_attention_2" if is_flash_attn_2_available() else "sdpa"
        if cfg.qlora:
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(  # type: ignore[no-untyped-call]
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=kwargs["dtype"],
            )
    else:
        kwargs["dtype"] = torch.float32  # bf16 on CPU is slow and imprecise
    try:
        model = AutoModelForCausalLM.from_pretrained(base_dir, **kwargs)
    except (OSError, ValueError) as exc:
        raise TrainingRefused(f"base model {base_dir} could not be loaded: {str(exc).splitlines()[0]}") from None
    if cfg.qlora:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(  # type: ignore[no-untyped-call]
            model, use_gradient_checkpointing=bool(cfg.gradient_checkpointing))
    model.config.use_cache = False
    if cuda:
        apply_liger_kernels(model)
    return model


def apply_liger_kernels(model: Any) -> bool:
    """Liger's Triton kernels (RoPE, RMSNorm, SwiGLU) patched into a loaded model; False when not installed.

    Called on the model itself, from the installed package: TRL 1.16's replacement for ``use_liger_kernel``
    fetches kernels from the Hub, which a training host may not reach. The loss kernels stay off: TRL computes
    the loss through its own chunked LM head. Liger also patches the architecture's module globally (RoPE, and
    the classes of models built later in this process), so a plain baseline must run in another process.
    """
    if not is_liger_kernel_available():
        return False
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    _apply_liger_kernel_to_instance(model=model, rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                    fused_linear_cross_entropy=False)
    log.info("Liger kernels applied to %s", type(model).__name__)
    return True


def _refuse_embedding_targets(model: Any, cfg: TrainConfig) -> None:
    """Named targets that resolve to the model's embeddings or output head are refused (GGUF cannot carry them)."""
    if isinstance(cfg.target_modules, str):
        return  # "all-linear" excludes the output head; a regex is checked by PEFT itself
    heads = {id(m) for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}
    for name, module in model.named_modules():
        embedding = id(module) in heads or isinstance(module, torch.nn.Embedding)
        if embedding and name.split(".")[-1] in cfg.target_modules:
            raise TrainingRefused(f"target module {name} is an embedding or the output head: GGUF LoRA adapters "
                                  "cannot carry it; target the linear projections")


def _set_distinct_pad(tokenizer: Any, end_of_turn: tuple[str, ...]) -> None:
    """Padding must never be an end-of-turn token, or collators could mask the token that teaches stopping."""
    stop = set(end_of_turn)
    if tokenizer.pad_token and tokenizer.pad_token not in stop:
        return
    vocab = tokenizer.get_vocab()
    candidates = [tokenizer.unk_token, *(t for t in vocab if "pad" in t.lower() and t.startswith("<")),
                  tokenizer.bos_token]
    for token in candidates:
        if token and token not in stop and token in vocab:
            tokenizer.pad_token = token
            return
    tokenizer.pad_token = next(t for t in vocab if t not in stop)


def _batching(cfg: TrainConfig) -> str:
    return "padding_free" if cfg.batching == "auto" else cfg.batching


def _gradient_checkpointing(cfg: TrainConfig, cuda: bool, model: Any) -> bool:
    if not cuda:
        return False  # recomputation only pays off when memory is the limit, never on CPU
    if cfg.gradient_checkpointing is not None:
        return cfg.gradient_checkpointing
    return bool(sum(p.numel() for p in model.parameters()) > 1_000_000_000)


# ---- run directory ---------------------------------------------------------------------------------
def _previous_run(out: Path, resume: bool) -> TrainConfig | None:
    """The stored config of the run in ``out`` when resuming; refuse to overwrite a run otherwise."""
    existing = [name for name in RUN_FILES if (out / name).exists()]
    if out.exists() and not out.is_dir():
        raise TrainingRefused(f"--out {out} exists and is not a directory")
    if not resume:
        if existing:
            raise TrainingRefused(f"--out {out} already holds a run ({', '.join(existing)}); pass --resume to "
                                  "continue it or choose another directory")
        return None
    config_file = out / "config.yaml"
    if not config_file.is_file():
        raise TrainingRefused(f"--resume: {out} holds no run to resume (no config.yaml); run without --resume to "
                              "start one")
    from trainer.config import load_config

    return load_config(config_file)


def _resume_checkpoint(out: Path) -> Path:
    """The checkpoint --resume continues from; TrainingRefused when the run saved none."""
    checkpoint = _last_checkpoint(out)
    if checkpoint is None:
        raise TrainingRefused(f"--resume: the run in {out} saved no checkpoint (it stopped before its first "
                              f"evaluation): nothing to resume; start again without --resume in a new --out, or "
                              f"remove {out}")
    return checkpoint


def _checkpoint_step(checkpoint: Path) -> int:
    state = _load_json(checkpoint / "trainer_state.json") or {}
    return int(state.get("global_step") or checkpoint.name.split("-")[-1])


def _last_checkpoint(out: Path) -> Path | None:
    ckpts = sorted((out / CHECKPOINTS).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    # trainer_state.json is written last: a checkpoint without a readable one was cut short by the crash.
    done = [p for p in ckpts if _load_json(p / "trainer_state.json") is not None]
    return done[-1] if done else None


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _last_user(conversation: Conversation) -> str:
    return next(m.content for m in reversed(conversation.messages) if m.role == "user")


def _log_to(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    import transformers

    transformers.utils.logging.enable_propagation()  # into our log file, not only transformers' own handler
    transformers.utils.logging.disable_default_handler()
    return handler


def _reset_peak_memory(cuda: bool) -> None:
    if cuda:
        torch.cuda.reset_peak_memory_stats()


def _peak_memory(cuda: bool) -> int:
    if cuda:
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def load_adapter(base: str | Path, adapter_dir: Path) -> Any:
    """The base model with a trained adapter applied (for tests and evaluation)."""
    model = AutoModelForCausalLM.from_pretrained(resolve_base(str(base)), dtype=torch.float32)
    return PeftModel.from_pretrained(model, adapter_dir)
