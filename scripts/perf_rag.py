"""Benchmark the RAG core against transformers' RAG classes on one random generator.

On the same random BART, passages and doc scores, in one run (alternating contenders, after a
warm-up, median of ``--repeats``):

1. RAG-Sequence thorough decoding: ``rag.decode_sequence.rag_sequence_generate`` against
   ``RagSequenceForGeneration.generate`` (goal: 5x faster).
2. RAG-Token beam search: ``rag.decode_token.rag_token_generate`` against
   ``RagTokenForGeneration.generate`` (goal: 3x faster). The share of our time spent in the
   model's own forwards (``nn.Module`` calls) is reported too: the limit of what decoding can shed.
3. A training step (forward + backward, both modes): ``rag.marginal.rag_loss`` against the
   transformers RAG forward with ``labels``, in questions/s, with dropout off (eval mode) so that
   both compute the same loss.

4. The copy generator (``generator/copy.py``) against the plain BART it wraps (same weights, same
   size, the copy head added): a RAG-Sequence training step with supervised pointing, and
   RAG-Sequence thorough and RAG-Token beam decoding (goal: at most 1.3x slower).

5. The fine-tuning loop's input preparation (``rag.common.loop``): ``--loader_steps`` reader
   steps (gold passages, the copy and span targets; forward, backward, AdamW) of the starter model
   on the embedded questions, with batches prepared in the step (``--loader_workers 0``, as before
   the DataLoader) against prepared ahead by one DataLoader worker, taking turns; the two runs'
   losses must be equal. The preparation alone is timed too: the most a worker can take off.

Token sequences must be identical and losses agree to 1e-4; the script prints both checks. Weights
are random, so "outputs" are only meaningful as an equivalence check.

Example:
    python scripts/perf_rag.py --json runs/perf_rag.json
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass

import torch
from measure import ModuleTime, Stopwatch, alternating  # this directory: the perf scripts' one set of timers

from rag.commands.cli import parse, run
from rag.common.atomic import check_output_parent, write_json
from rag.common.errors import require
from rag.common.options import NON_NEGATIVE, POSITIVE, check_fields, option
from rag.config import DecodeConfig
from rag.decode_sequence import rag_sequence_generate
from rag.decode_token import rag_token_generate
from rag.marginal import rag_loss


@dataclass(frozen=True)
class Args:
    vocab_size: int = option(8000, "generator vocabulary V", within=POSITIVE)
    d_model: int = option(256, "generator hidden size D", within=POSITIVE)
    layers: int = option(3, "encoder layers and decoder layers (each)", within=POSITIVE)
    heads: int = option(4, "attention heads", within=POSITIVE)
    ffn_dim: int = option(1024, "feed-forward width", within=POSITIVE)
    init_std: float = option(0.2, "weight init std (BART's 0.02 makes a random model emit EOS at once)",
        within=POSITIVE)
    eos_bias: float = option(0.0, "added to EOS's logit bias (random models stop at once or never)")
    questions: int = option(8, "B, questions per batch", within=POSITIVE)
    passages: int = option(5, "K, passages per question", within=POSITIVE)
    context_length: int = option(192, 'L, "title / text // question" tokens (DPR passages: 100 words)',
        within=POSITIVE)
    decode: DecodeConfig = option(
        DecodeConfig(num_beams=4), "both decoders' search, ours and transformers' alike")
    target_length: int = option(16, "T, label length for the training step", within=POSITIVE)
    repeats: int = option(5, "timed runs per contender (alternating); the median is reported",
        within=POSITIVE)
    threads: int = option(
        1, "torch CPU threads (0 = torch's default; >1 is erratic on a shared machine)", within=NON_NEGATIVE)
    seed: int = option(0, "weights, inputs and scores", within=NON_NEGATIVE)
    loader_steps: int = option(
        8, "5: reader steps of the starter per run (0 = skip this part)", within=NON_NEGATIVE)
    loader_batch: int = option(8, "5: questions per reader step", within=POSITIVE)
    json: str | None = option(None, "write all figures here")

    def __post_init__(self) -> None:
        check_fields(self)
        require(self.decode.constrain == "none", "constrain", self.decode.constrain,
                "cannot be compared: transformers' generate has no span constraint")


def build_models(args: Args):
    """The random generator and transformers' RAG-Sequence / RAG-Token models sharing it."""
    from transformers import (
        BartConfig,
        BartForConditionalGeneration,
        DPRConfig,
        DPRQuestionEncoder,
        RagConfig,
        RagSequenceForGeneration,
        RagTokenForGeneration,
    )

    torch.manual_seed(args.seed)
    bart = BartConfig(
        vocab_size=args.vocab_size, d_model=args.d_model, encoder_layers=args.layers,
        decoder_layers=args.layers, encoder_attention_heads=args.heads,
        decoder_attention_heads=args.heads, encoder_ffn_dim=args.ffn_dim,
        decoder_ffn_dim=args.ffn_dim, max_position_embeddings=max(args.context_length, 64),
        init_std=args.init_std,
    )
    generator = BartForConditionalGeneration(bart).eval()
    with torch.no_grad():
        generator.final_logits_bias[0, bart.eos_token_id] += args.eos_bias
    # RagModel builds a question encoder from its config when given none: keep that one tiny
    dpr = DPRConfig(vocab_size=32, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                    intermediate_size=8, max_position_embeddings=8)
    config = RagConfig.from_question_encoder_generator_configs(dpr, bart, n_docs=args.passages)
    seq = RagSequenceForGeneration(config, question_encoder=DPRQuestionEncoder(dpr),
                                   generator=generator).eval()
    tok = RagTokenForGeneration(config, question_encoder=DPRQuestionEncoder(dpr),
                                generator=generator).eval()
    return generator, seq, tok


def make_batch(args: Args, pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random (B, K, L) passages, right-padded to random lengths >= L/2, and (B, K) doc scores."""
    g = torch.Generator().manual_seed(args.seed + 1)
    B, K, L = args.questions, args.passages, args.context_length
    ids = torch.randint(4, args.vocab_size, (B, K, L), generator=g)
    lengths = torch.randint(L // 2, L + 1, (B, K, 1), generator=g)
    mask = (torch.arange(L) < lengths).long()  # (B, K, L)
    ids = ids.masked_fill(mask == 0, pad)
    return ids, mask, torch.randn(B, K, generator=g) * 2


def perf_decoding(args: Args, generator, hf_seq, hf_tok, ids, mask, scores) -> dict:
    B, K, L = ids.shape
    cfg = args.decode
    flat = {"context_input_ids": ids.view(B * K, L), "context_attention_mask": mask.view(B * K, L),
            "doc_scores": scores, "n_docs": K, **cfg.generate_kwargs()}

    def ours_seq(fast: bool = False):
        # transformers' RAG-Sequence search ignores the context mask: ours too, for equality
        return rag_sequence_generate(generator, ids, mask, scores, cfg, fast=fast,
                                     attend_to_padding=True)

    def ours_tok():
        return rag_token_generate(generator, ids, mask, scores, cfg)

    with torch.no_grad():
        hf_seq_out, hf_tok_out = hf_seq.generate(**flat), hf_tok.generate(**flat)
    seq_out, tok_out = ours_seq(), ours_tok()
    result = {
        "sequence_identical": torch.equal(seq_out.sequences.flatten(0, 1), hf_seq_out),
        "token_identical": torch.equal(tok_out.sequences.flatten(0, 1), hf_tok_out),
        "sequence_mean_len": _mean_len(hf_seq_out, generator.config.pad_token_id),
        "token_mean_len": _mean_len(hf_tok_out, generator.config.pad_token_id),
    }
    with torch.no_grad():
        t = alternating({"ours": ours_seq, "hf": lambda: hf_seq.generate(**flat)}, args.repeats)
        result.update(sequence_ours_s=t["ours"], sequence_hf_s=t["hf"])
        t = alternating({"fast": lambda: ours_seq(fast=True)}, args.repeats)
        result["sequence_fast_s"] = t["fast"]
        t = alternating({"ours": ours_tok, "hf": lambda: hf_tok.generate(**flat)}, args.repeats)
        result.update(token_ours_s=t["ours"], token_hf_s=t["hf"])
        for name, fn in (("sequence", ours_seq), ("token", ours_tok)):
            with Stopwatch() as watch, ModuleTime() as inside:  # one more run, hooks on
                fn()
            result[f"{name}_model_share"] = inside.seconds / watch.seconds
    return result


def _mean_len(seqs: torch.Tensor, pad: int) -> float:
    return seqs[:, 1:].ne(pad).sum(1).float().mean().item()


def perf_training(args: Args, generator, hf_models: dict, ids, mask, scores) -> dict:
    B, K, L = ids.shape
    g = torch.Generator().manual_seed(args.seed + 2)
    labels = torch.randint(4, args.vocab_size, (B, args.target_length), generator=g)
    labels[:, 0] = generator.config.decoder_start_token_id
    labels[B // 2 :, args.target_length // 2 :] = generator.config.pad_token_id
    result = {}
    for mode, hf in hf_models.items():
        doc_scores = scores.clone().requires_grad_(True)

        def ours(mode=mode, doc_scores=doc_scores):
            generator.zero_grad(set_to_none=True)
            loss, _ = rag_loss(mode, generator, ids, mask, doc_scores, labels)
            loss.backward()
            return loss.detach()

        def theirs(hf=hf, doc_scores=doc_scores):
            generator.zero_grad(set_to_none=True)
            out = hf(context_input_ids=ids.view(B * K, L),
                     context_attention_mask=mask.view(B * K, L), doc_scores=doc_scores,
                     labels=labels, n_docs=K, reduce_loss=False)
            loss = out.loss.mean()
            loss.backward()
            return loss.detach()

        result[f"{mode}_loss_abs_diff"] = (ours() - theirs()).abs().item()
        t = alternating({"ours": ours, "hf": theirs}, args.repeats)
        result[f"{mode}_train_ours_qps"] = B / t["ours"]
        result[f"{mode}_train_hf_qps"] = B / t["hf"]
    return result


def perf_copy(args: Args, generator, ids, mask, scores) -> dict:
    """Copy generator against the plain BART it wraps: training step and decoding, seconds."""
    from generator.copy import CopyBartForConditionalGeneration

    copy = CopyBartForConditionalGeneration.from_bart(generator).eval()
    B, K, L = ids.shape
    g = torch.Generator().manual_seed(args.seed + 3)
    labels = torch.randint(4, args.vocab_size, (B, args.target_length), generator=g)
    labels[:, 0] = generator.config.decoder_start_token_id
    targets = torch.randint(0, L // 2, (B, K, args.target_length - 1), generator=g)
    cfg = args.decode

    def step(model, **pointer):
        model.zero_grad(set_to_none=True)
        loss, _ = rag_loss("sequence", model, ids, mask, scores, labels, **pointer)
        loss.backward()

    result = {}
    t = alternating({"plain": lambda: step(generator),
               "copy": lambda: step(copy, pointer_targets=targets, pointer_weight=1.0)},
              args.repeats)
    result.update(copy_train_plain_s=t["plain"], copy_train_copy_s=t["copy"])
    with torch.no_grad():
        t = alternating({"plain": lambda: rag_sequence_generate(generator, ids, mask, scores, cfg),
                   "copy": lambda: rag_sequence_generate(copy, ids, mask, scores, cfg)},
                  args.repeats)
        result.update(copy_sequence_plain_s=t["plain"], copy_sequence_copy_s=t["copy"])
        t = alternating({"plain": lambda: rag_token_generate(generator, ids, mask, scores, cfg),
                   "copy": lambda: rag_token_generate(copy, ids, mask, scores, cfg)}, args.repeats)
        result.update(copy_token_plain_s=t["plain"], copy_token_copy_s=t["copy"])
    return result


def perf_loader(args: Args) -> dict:
    """The starter's reader steps with batches prepared in the step against by one worker."""
    import itertools

    from rag.common.loop import OptimConfig, make_accelerator, new_progress, optimizer_step, train_loop
    from rag.common.questions import read_questions
    from rag.default import QUESTIONS
    from rag.model import RagModel

    model = RagModel.from_pretrained(None)  # the starter; its index is built on first use
    table = model.index.passages
    passages = list(zip(table["title"], table["text"], strict=True))
    examples = []
    for q in read_questions(QUESTIONS):  # each with the first passage holding its answer
        gold = next((p for p in passages if q.answers[0] in p[1]), None)
        if gold is not None:
            examples.append((q.question, q.answers[0], gold))
    n = args.loader_steps * args.loader_batch
    examples = list(itertools.islice(itertools.cycle(examples), n))
    result, losses = {}, {}
    start = {k: v.clone() for k, v in model.state_dict().items()}

    def run(workers: int) -> float:  # each from the same weights and random state
        model.load_state_dict(start)
        torch.manual_seed(args.seed)
        optim = OptimConfig(epochs=1, batch_size=args.loader_batch, lr=1e-9, warmup_ratio=0.0,
                            loader_workers=workers)
        params = [p for p in model.parameters() if p.requires_grad]
        opt, sched = optim.optimizer(params, optim.updates(n, 1))
        acc, seen = make_accelerator(), []

        def loss(batch):
            seen.append(model(batch=batch)[0])
            return seen[-1]

        with Stopwatch() as watch:
            train_loop(acc, model, new_progress({}), optim, lambda epoch: examples,
                       lambda rows: model.training_batch(*map(list, zip(*rows, strict=True))),
                       loss, lambda value: optimizer_step(acc, value, params, opt, sched, 1.0),
                       seed=args.seed, progress=False)
        losses[workers] = [x.item() for x in seen]
        return watch.seconds

    run(0)  # warm-up
    batches = [examples[i : i + args.loader_batch] for i in range(0, n, args.loader_batch)]
    with Stopwatch() as watch:  # the preparation alone: what a worker can take off the step
        for rows in batches:
            model.training_batch(*map(list, zip(*rows, strict=True)))
    result["loader_prepare_s_per_step"] = watch.seconds / len(batches)
    times = {0: [], 1: []}
    for _ in range(2):  # taking turns
        for workers in times:
            times[workers].append(run(workers))
    for workers, name in ((0, "inline"), (1, "worker")):
        result[f"loader_{name}_s_per_step"] = min(times[workers]) / args.loader_steps
    result["loader_same_losses"] = losses[0] == losses[1]
    return result


def main() -> None:
    (args,) = parse([Args], description=__doc__)
    if args.json:
        check_output_parent(args.json)
    if args.threads:
        torch.set_num_threads(args.threads)
    generator, hf_seq, hf_tok = build_models(args)
    ids, mask, scores = make_batch(args, generator.config.pad_token_id)
    figures = perf_decoding(args, generator, hf_seq, hf_tok, ids, mask, scores)
    figures.update(perf_training(args, generator, {"sequence": hf_seq, "token": hf_tok},
                                  ids, mask, scores))
    figures.update(perf_copy(args, generator, ids, mask, scores))
    if args.loader_steps:
        figures.update(perf_loader(args))
    s = t = figures
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end")
    print(f"B={args.questions} K={args.passages} L={args.context_length} beams={args.decode.num_beams} "
          f"max_length={args.decode.max_length} D={args.d_model} layers={args.layers} V={args.vocab_size}")
    print(f"RAG-Sequence thorough: ours {s['sequence_ours_s']:.3f}s  transformers "
          f"{s['sequence_hf_s']:.3f}s  speedup {s['sequence_hf_s'] / s['sequence_ours_s']:.2f}x  "
          f"identical={s['sequence_identical']}  mean answer length {s['sequence_mean_len']:.1f}")
    print(f"RAG-Sequence fast:     ours {s['sequence_fast_s']:.3f}s  (no transformers counterpart)")
    print(f"time in the model's own forwards (nn.Module calls), ours: RAG-Sequence thorough "
          f"{100 * s['sequence_model_share']:.0f}%, RAG-Token beam {100 * t['token_model_share']:.0f}%")
    print(f"RAG-Token beam:        ours {t['token_ours_s']:.3f}s  transformers "
          f"{t['token_hf_s']:.3f}s  speedup {t['token_hf_s'] / t['token_ours_s']:.2f}x  "
          f"identical={t['token_identical']}  mean answer length {t['token_mean_len']:.1f}")
    for mode in ("sequence", "token"):
        ours, hf = figures[f"{mode}_train_ours_qps"], figures[f"{mode}_train_hf_qps"]
        print(f"train step ({mode:8s}):  ours {ours:.1f} q/s  transformers {hf:.1f} q/s  "
              f"speedup {ours / hf:.2f}x  |loss diff| {figures[f'{mode}_loss_abs_diff']:.2e}")
    for name, key in (("train step (sequence)", "train"), ("RAG-Sequence thorough", "sequence"),
                      ("RAG-Token beam", "token")):
        plain, copy = figures[f"copy_{key}_plain_s"], figures[f"copy_{key}_copy_s"]
        print(f"copy generator, {name}: plain BART {plain:.3f}s  copy {copy:.3f}s  "
              f"ratio {copy / plain:.2f}x (goal <= 1.3x)")
    if args.loader_steps:
        inline, ahead = figures["loader_inline_s_per_step"], figures["loader_worker_s_per_step"]
        prep = figures["loader_prepare_s_per_step"]
        print(f"reader step, starter, B={args.loader_batch}: batches prepared in the step "
              f"{inline:.3f}s  by a DataLoader worker {ahead:.3f}s  speedup {inline / ahead:.2f}x  "
              f"same losses={figures['loader_same_losses']}  (preparing alone {prep:.3f}s, "
              f"{100 * prep / inline:.0f}% of the step)")
    if args.json:
        write_json(args.json, {"args": asdict(args), "torch": torch.__version__,
                               "threads": torch.get_num_threads(), **figures})


if __name__ == "__main__":
    run(main)
