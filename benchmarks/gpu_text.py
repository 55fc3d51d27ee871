"""GPU throughput: bert mt_l1 + mlm in the harness (token store, trimmed batches, bf16) against the released pipeline.

Both sides train the same model (BERT-base's architecture, randomly initialised, with its MLM head and the
L1 penalty: the paper's mt_l1 + mlm step on CivilComments, max_length 220: one end-task batch and one
auxiliary batch, one summed loss, one step):
- harness: the comments are tokenised once into the int32 store; each batch is gathered, trimmed to its
  longest row and copied; the step runs under bf16 autocast;
- released: a replica of the released pipeline, fp32, each batch tokenised on the CPU every step and padded
  to max_length (220), then copied.
The texts are synthetic: words from a fixed vocabulary, lengths drawn log-normal (median --median-words
words), an assumption about comment lengths, not CivilComments' measured distribution; the printed mean
trimmed length says what the harness's batches held. It prints sequences/s of each (end-task rows), their
ratio, and the harness's model FLOP utilisation (torch's FlopCounterMode over the device's peak bf16 FLOP/s).

    python benchmarks/gpu_text.py --batch 16 --steps 30
    python benchmarks/gpu_text.py --tiny --steps 2 --allow-cpu      # a smoke test of the script on a CPU
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from gpu import print_utilisation, timed_rate  # benchmarks/gpu.py, beside this script

MAX_LENGTH = 220  # the paper's CivilComments max_length


def synthetic_comments(n: int, median_words: int, seed: int = 0) -> list[str]:
    """`n` texts of words from a 5,000-word vocabulary, with log-normal lengths around `median_words`."""
    rng = np.random.default_rng(seed)
    words = [f"w{i}" + "abcdefgh"[i % 8] * (1 + i % 5) for i in range(5000)]
    lengths = np.clip(rng.lognormal(np.log(median_words), 0.8, n).astype(int), 1, 400)
    return [" ".join(words[j] for j in rng.integers(0, len(words), k)) for k in lengths]


def model_dir(texts: list[str], tiny: bool, tmp: Path) -> str:
    """A local model directory: BERT-base's config (or a tiny one) and a WordPiece tokenizer trained on `texts`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=8000, special_tokens=specials))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    out = tmp / "bert"
    fast = BertTokenizerFast(tokenizer_object=tok, **{f"{s[1:-1].lower()}_token": s for s in specials})
    fast.save_pretrained(str(out))
    # vocab_size stays BERT-base's 30522 when not tiny: the MLM head's cost is that of the paper's model
    config = (BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                         vocab_size=len(fast)) if tiny else BertConfig())
    config.save_pretrained(str(out))
    return str(out)


def build(directory: str, device: torch.device):
    """The mt_l1 + mlm algorithm on the `bert` backbone at `directory` (random weights: pretrained=false)."""
    from robustbench_mtl.config import ModelHParams, TrainHParams
    from robustbench_mtl.data.base import DataInfo
    from robustbench_mtl.hparams import build as build_hp
    from robustbench_mtl.registry import ALGORITHMS, BACKBONES, OBJECTIVES
    from robustbench_mtl.trainer import assemble

    info = DataInfo("bench", "text", (MAX_LENGTH,), {"y": 2}, ("g0", "g1", "g2", "g3"), (1, 1, 1, 1),
                    tokenizer=directory)
    classes = {"backbone": BACKBONES.get("bert"), "algorithm": ALGORITHMS.get("mt_l1"),
               "objective:mlm": OBJECTIVES.get("mlm"), "objective:l1": OBJECTIVES.get("l1")}
    hparams = {"backbone": build_hp(classes["backbone"].HParams, "backbone",
                                    [{"model": directory, "pretrained": "false"}]),
               "algorithm": classes["algorithm"].HParams(), "model": ModelHParams(),
               "train": TrainHParams(lr=1e-5), "mlm": classes["objective:mlm"].HParams(),
               "l1": classes["objective:l1"].HParams()}
    return assemble(classes, hparams, ["mlm", "l1"], info, 0, 10**6, device)


def harness_rate(algo, texts: list[str], directory: str, batch: int, steps: int,
                 device: torch.device) -> tuple[float, float, float]:
    """(sequences/s, FLOPs of one step, mean trimmed length) training from the token store under bf16."""
    from torch.utils.flop_counter import FlopCounterMode

    from robustbench_mtl.data import _store
    from robustbench_mtl.data._text import TokenSplit, load_tokenizer, tokenize_rows
    from robustbench_mtl.loaders import AuxStream, epoch_batches

    tok = load_tokenizer(directory)
    lengths = np.zeros(len(texts), dtype=np.int32)
    ids = _store.build_array(f"gpu-text-bench-{len(texts)}", (len(texts), MAX_LENGTH), np.int32,
                             lambda out: tokenize_rows(tok, texts, MAX_LENGTH, out, lengths))
    lengths = (np.asarray(ids) != tok.pad_token_id).sum(1)
    y = torch.zeros(len(texts), dtype=torch.long)
    split = TokenSplit(_store.as_tensor(ids), {"y": y}, y, y.clone(), store=ids,
                       lengths=torch.as_tensor(lengths, dtype=torch.long), pad_id=int(tok.pad_token_id)).to(device)
    aux = AuxStream(split, batch, 0)
    if device.type == "cuda":
        algo.autocast = torch.autocast("cuda", dtype=torch.bfloat16)
    batches = (b for epoch in range(10**6) for b in epoch_batches(split, batch, 0, epoch))
    algo.update(next(batches), aux.next())  # warm-up
    with FlopCounterMode(display=False) as counter:
        algo.update(next(batches), aux.next())
    seen = []

    def step(k: int) -> None:
        b = next(batches)
        seen.append(b.x.shape[1])
        algo.update(b, aux.next())

    return timed_rate(step, steps, batch, device), float(counter.get_total_flops()), sum(seen) / len(seen)


def released_rate(algo, texts: list[str], directory: str, batch: int, steps: int, device: torch.device) -> float:
    """Sequences/s of the released pipeline's replica: fp32, tokenised per batch on the CPU, padded to 220."""
    from robustbench_mtl.data._text import load_tokenizer
    from robustbench_mtl.types import Batch

    tok = load_tokenizer(directory)
    algo.autocast = None

    def step(k: int) -> None:
        idx = [(k * batch + j) % len(texts) for j in range(batch)]
        enc = tok([texts[i] for i in idx], truncation=True, max_length=MAX_LENGTH, padding="max_length",
                  return_tensors="pt")
        x = enc["input_ids"].to(device)
        ids = torch.tensor(idx, device=device)
        zeros = torch.zeros(batch, dtype=torch.long, device=device)
        algo.update(Batch(x, {"y": zeros}, zeros, zeros, ids), Batch(x, {}, zeros, zeros, ids))

    step(0)  # warm-up
    return timed_rate(step, steps, batch, device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--texts", type=int, default=4096)
    ap.add_argument("--median-words", type=int, default=50)
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="the device's peak bf16 TFLOP/s; 0 = known table")
    ap.add_argument("--tiny", action="store_true", help="a tiny BERT instead of BERT-base (checks the script)")
    ap.add_argument("--allow-cpu", action="store_true", help="run without CUDA (no meaningful figures)")
    args = ap.parse_args()
    if not torch.cuda.is_available() and not args.allow_cpu:
        raise SystemExit("gpu_text.py measures a CUDA device and torch sees none (use --allow-cpu to check the script)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    texts = synthetic_comments(args.texts, args.median_words)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("ROBUSTBENCH_MTL_CACHE", str(Path(tmp) / "cache"))
        directory = model_dir(texts, args.tiny, Path(tmp))
        h_rate, flops, mean_len = harness_rate(build(directory, device), texts, directory, args.batch, args.steps,
                                               device)
        r_rate = released_rate(build(directory, device), texts, directory, args.batch, args.steps, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device={name}, model={'tiny BERT' if args.tiny else 'BERT-base (random init)'}, max_length={MAX_LENGTH}, "
          f"batch={args.batch}, steps={args.steps}, mean trimmed batch length={mean_len:.1f}")
    print(f"harness (token store, trimmed, bf16): {h_rate:.1f} sequences/s   released replica (tokenised per "
          f"step, padded to {MAX_LENGTH}, fp32): {r_rate:.1f} sequences/s   ratio: {h_rate / r_rate:.2f}")
    print_utilisation(name, flops, h_rate, args.batch, args.peak_tflops)

if __name__ == "__main__":
    main()
