"""Peers in one benchmark: the project's default recipe against three others, same data, same loss.

Every trainer gets the same ``vectors`` (train split to learn from, validation split to score), the
same wall-clock training budget (``--minutes``, default 10) and the same torch thread count
(``--threads``, default 1). Trainers run as separate processes, ``--parallel`` at a time (default 2:
four 10-minute trainers take 20 minutes on 2 cores).

The loss, for every trainer alike: the mean negative log-likelihood of every next token of each framed
validation poem (start token … end token; each poem's first token is given, every later one is
predicted), padding never counted. Evaluation never eats into a budget: each trainer copies its weights
at marks of its training clock (every ``--eval-every`` seconds, default 30, at most a tenth of the
budget, and at 10 %, 20 %, 50 % and 100 % of it; a copy takes milliseconds) and the copies are scored
after its training ends. Reported: validation perplexity at 1, 2, 5 and 10 minutes (10/20/50/100 % of
a shorter budget), and for each peer the training time the project needed to reach that peer's final
perplexity (its curve, linearly interpolated between marks), with the ratio peer budget / that time.

The trainers (each our own re-implementation; no peer's code is copied):

* ``project``: ``fit`` with conf/base/parameters_training.yml (the defaults a user gets).
* ``nanogpt``: nanoGPT's CPU recipe for its character-level example (README "I only have a macbook":
  ``config/train_shakespeare_char.py`` with ``--device=cpu --compile=False --block_size=64
  --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --dropout=0.0``; model.py, train.py read):
  a GPT of pre-norm blocks (LayerNorm and Linear without bias, GELU MLP 4×, causal attention),
  learned positions, output layer tied to the token embedding, N(0, 0.02) init (residual projections
  0.02/√(2·layers)); AdamW lr 1e-3, betas (0.9, 0.99), weight decay 0.1 on matrices only, gradient
  clip 1.0, 100 warm-up steps, cosine decay to 1e-4 at the end of the run (here: of the budget);
  batches of 12 random 64-token windows of the concatenated stream of framed training poems.
  Scored with a sliding window: a poem longer than the block is predicted from its last 64 tokens.
* ``book``: the pytorch-book chapter-9 poet (chenyuntc/pytorch-book, chapter09-neural_poet_RNN:
  main.py, model.py, data.py read): embedding 128 → 2-layer LSTM 256 → linear; Adam lr 1e-3 (the
  config's weight_decay is never passed to the optimizer); batches of 128 shuffled poems, each
  padded on the left to 125 tokens with a padding token (``pad_sequences(padding='pre')``), and
  trained with a plain cross-entropy over all 124 positions — padding included, as the book does.
  Scored the same way it was trained (left-padded to 125) on the poem's own tokens only.
* ``classic``: the classic exercise's loop (``classic_baseline.py``, also in bench_training.py).

    python benchmarks/bench_peers.py                                 # the full run (~20 min on 2 cores)
    python benchmarks/bench_peers.py --minutes 0.5 --parallel 2      # a dry run
    python benchmarks/bench_peers.py --only project,nanogpt

Results: benchmarks/results/peers.{json,md} (``peers_dry`` below 10 minutes).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import yaml
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from classic_baseline import ClassicPoet, train_classic  # noqa: E402
from common import write_results  # noqa: E402

from tangshi_pipeline.poet.batching import Buckets, split_sequences  # noqa: E402
from tangshi_pipeline.poet.objective import evaluate, model_config  # noqa: E402
from tangshi_pipeline.poet.params import TrainingParams  # noqa: E402
from tangshi_pipeline.poet.training import fit  # noqa: E402
from tangshi_pipeline.poet.vocab import PAD_ID, Vocab  # noqa: E402

TRAINERS = ["project", "nanogpt", "book", "classic"]
MARKS = (0.1, 0.2, 0.5, 1.0)  # of the budget: 1, 2, 5, 10 minutes of a 10-minute one
CPU = torch.device("cpu")


class Snapshots:
    """Copies of a model's weights at marks of its training clock, scored after training."""

    def __init__(self, model: nn.Module, budget: float, every: float):
        self.model, self.taken = model, []
        marks = {round(budget * m, 3) for m in MARKS} | set(np.arange(every, budget, every).round(3).tolist())
        self.marks = sorted(marks)

    def __call__(self, elapsed: float) -> None:
        while self.marks and elapsed >= self.marks[0]:
            self.taken.append((self.marks.pop(0), {k: v.detach().clone() for k, v in self.model.state_dict().items()}))

    def scored(self, score: Callable[[nn.Module], float]) -> list[dict]:
        rows = []
        for seconds, state in self.taken:
            self.model.load_state_dict(state)
            loss = score(self.model)
            rows.append({"seconds": seconds, "val_loss": round(loss, 4), "val_perplexity": round(math.exp(loss), 2)})
        return rows


# ------------------------------------------------------------------------------- the trainers


def train_project(data: dict, budget: float, every: float) -> tuple[list, dict]:
    raw = yaml.safe_load((ROOT / "conf/base/parameters_training.yml").read_text("utf-8"))["training"]
    raw.update(max_minutes=budget / 60, epochs=1000, device="cpu", threads=torch.get_num_threads(), resume=False,
               checkpoint_minutes=None)
    p = TrainingParams(**raw)
    train = Buckets(data["train"], p.batch_size)
    holder, start = {}, time.perf_counter()

    def on_step(pos, model) -> None:
        holder.setdefault("snap", Snapshots(model, budget, every))(time.perf_counter() - start)
        holder["tokens"] = pos.tokens

    result = fit(model_config(p, data["vocab_size"]), "peers", train, None, p, None, CPU, on_step=on_step)
    holder["snap"](math.inf)  # the final weights, at the budget's end
    val = Buckets(data["val"], 64)
    return holder["snap"].scored(lambda m: evaluate(m, val, CPU)), {"tokens": result.position.tokens,
                                                                     "params": p.model_dump()}


def train_classic_loop(data: dict, budget: float, every: float) -> tuple[list, dict]:
    model = ClassicPoet(data["vocab_size"])
    snaps = Snapshots(model, budget, every)
    run = train_classic(model, data["train"], budget, on_step=lambda elapsed, tokens: snaps(elapsed))
    snaps(math.inf)
    val = Buckets(data["val"], 64)
    return snaps.scored(lambda m: evaluate(m, val, CPU)), {"tokens": run["tokens"]}  # scores the ReLU'd logits


class Block(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln_1, self.ln_2 = nn.LayerNorm(width, bias=False), nn.LayerNorm(width, bias=False)
        self.attn, self.attn_proj = nn.Linear(width, 3 * width, bias=False), nn.Linear(width, width, bias=False)
        self.fc, self.fc_proj = nn.Linear(width, 4 * width, bias=False), nn.Linear(4 * width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2)
                   for t in self.attn(self.ln_1(x)).split(C, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.attn_proj(y)
        return x + self.fc_proj(F.gelu(self.fc(self.ln_2(x))))


class TinyGPT(nn.Module):
    def __init__(self, vocab_size: int, block: int = 64, layers: int = 4, heads: int = 4, width: int = 128):
        super().__init__()
        self.block = block
        self.wte, self.wpe = nn.Embedding(vocab_size, width), nn.Embedding(block, width)
        self.h = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width, bias=False)
        self.lm_head = nn.Linear(width, vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight  # tied
        for name, p in self.named_parameters():
            if p.dim() == 2:
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * layers) if name.endswith("proj.weight") else 0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1]))
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def gpt_windows(poem: np.ndarray, block: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(windows (W, ≤block), the positions in each window whose predictions count, their targets): the
    poem's first ``block`` tokens, then for each later target the ``block`` tokens before it."""
    x = torch.from_numpy(np.asarray(poem, dtype=np.int64))
    n = len(x) - 1  # predictions
    first = min(n, block)
    windows, picks, targets = [x[:first]], [torch.arange(first)], [x[1:first + 1]]
    for t in range(first, n):  # predict x[t + 1] from x[t - block + 1 .. t]
        windows.append(x[t - block + 1:t + 1])
        picks.append(torch.tensor([block - 1]))
        targets.append(x[t + 1:t + 2])
    return windows, picks, targets


@torch.no_grad()
def score_gpt(model: TinyGPT, poems: list) -> float:
    model.eval()
    total, count = 0.0, 0
    for poem in poems:
        for w, pick, y in zip(*gpt_windows(poem, model.block)):
            logits = model(w[None])[0, pick]
            total += F.cross_entropy(logits, y, reduction="sum").item()
            count += len(y)
    model.train()
    return total / count


def train_nanogpt(data: dict, budget: float, every: float) -> tuple[list, dict]:
    torch.manual_seed(1337)
    block, batch, lr, min_lr, warmup = 64, 12, 1e-3, 1e-4, 100
    stream = torch.from_numpy(np.concatenate(data["train"]).astype(np.int64))
    model = TinyGPT(data["vocab_size"], block)
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    others = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": matrices, "weight_decay": 0.1}, {"params": others, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.99))
    snaps, step, tokens, start = Snapshots(model, budget, every), 0, 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < budget:
        rate = lr * (step + 1) / (warmup + 1) if step < warmup else \
            min_lr + 0.5 * (1 + math.cos(math.pi * min(elapsed / budget, 1.0))) * (lr - min_lr)
        for group in opt.param_groups:
            group["lr"] = rate
        at = torch.randint(len(stream) - block, (batch,))
        x = torch.stack([stream[i:i + block] for i in at])
        y = torch.stack([stream[i + 1:i + 1 + block] for i in at])
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step, tokens = step + 1, tokens + batch * block
        snaps(time.perf_counter() - start)
    snaps(math.inf)
    return snaps.scored(lambda m: score_gpt(m, data["val"])), {"tokens": tokens, "steps": step}


class BookPoet(nn.Module):
    def __init__(self, vocab_size: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, 128)
        self.lstm = nn.LSTM(128, 256, num_layers=2, batch_first=True)
        self.linear = nn.Linear(256, vocab_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.linear(self.lstm(self.embedding(ids))[0])


BOOK_LEN = 125


def book_pad(poems: list) -> torch.Tensor:
    """Each poem cut to 125 tokens and padded on its left to 125 with the padding token."""
    out = torch.full((len(poems), BOOK_LEN), PAD_ID, dtype=torch.long)
    for i, poem in enumerate(poems):
        poem = torch.from_numpy(np.asarray(poem[:BOOK_LEN], dtype=np.int64))
        out[i, BOOK_LEN - len(poem):] = poem
    return out


@torch.no_grad()
def score_book(model: BookPoet, poems: list) -> float:
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(poems), 128):
        chunk = poems[i:i + 128]
        ids = book_pad(chunk)
        logits = model(ids[:, :-1])
        targets = ids[:, 1:].clone()
        for r, poem in enumerate(chunk):  # only the poem's own tokens after its first count
            targets[r, :BOOK_LEN - min(len(poem), BOOK_LEN)] = -100
        total += F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum").item()
        count += int((targets != -100).sum())
    model.train()
    return total / count


def train_book(data: dict, budget: float, every: float) -> tuple[list, dict]:
    torch.manual_seed(0)
    model = BookPoet(data["vocab_size"])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    padded = book_pad(data["train"])
    snaps, tokens, start = Snapshots(model, budget, every), 0, time.perf_counter()
    while time.perf_counter() - start < budget:
        for rows in torch.randperm(len(padded)).split(128):
            ids = padded[rows]
            loss = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())  # padding included
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tokens += ids[:, 1:].numel()
            snaps(elapsed := time.perf_counter() - start)
            if elapsed >= budget:
                break
    snaps(math.inf)
    return snaps.scored(lambda m: score_book(m, data["val"])), {"tokens_with_padding": tokens}


TRAIN = {"project": train_project, "nanogpt": train_nanogpt, "book": train_book, "classic": train_classic_loop}


# ------------------------------------------------------------------------------- the run


def one(name: str, minutes: float, threads: int, every: float, out: Path) -> None:
    """Train one trainer (in this process) and write its curve to ``out``."""
    torch.set_num_threads(threads)
    vectors = pd.read_parquet(ROOT / "data/05_model_input/vectors.parquet")
    vocab = Vocab.from_json(json.loads((ROOT / "data/05_model_input/vocab.json").read_text("utf-8")))
    data = {"vocab_size": len(vocab), "train": split_sequences(vectors, "train"), "val": split_sequences(vectors, "val")}
    budget = minutes * 60
    every = min(every, budget / 10)
    started = time.perf_counter()
    curve, extra = TRAIN[name](data, budget, every)
    out.write_text(json.dumps({"name": name, "curve": curve, **extra,
                               "wall_s_with_scoring": round(time.perf_counter() - started, 1)}), "utf-8")


def at(curve: list, seconds: float) -> float:
    """The perplexity of the newest copy taken at or before ``seconds``."""
    return [r["val_perplexity"] for r in curve if r["seconds"] <= seconds + 1e-6][-1]


def time_to(curve: list, loss: float) -> float | None:
    """Training seconds until the curve first reaches ``loss`` (linear between marks), or None."""
    prev = (0.0, math.inf)
    for r in curve:
        if r["val_loss"] <= loss:
            s0, l0 = prev
            if not math.isfinite(l0):
                return r["seconds"]
            return s0 + (r["seconds"] - s0) * (l0 - loss) / (l0 - r["val_loss"])
        prev = (r["seconds"], r["val_loss"])
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="training budget of each trainer")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each trainer")
    ap.add_argument("--parallel", type=int, default=2, help="trainers running at once (separate processes)")
    ap.add_argument("--only", default=",".join(TRAINERS), help=f"comma-separated subset of {','.join(TRAINERS)}")
    ap.add_argument("--eval-every", type=float, default=30.0, help="seconds of training between scored copies")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one trainer in this process
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        return one(args.one, args.minutes, args.threads, args.eval_every, Path(args.out))
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    if unknown := sorted(set(names) - set(TRAINERS)):
        raise SystemExit(f"--only: unknown trainers {unknown}; choose from {TRAINERS}")
    if not (ROOT / "data/05_model_input/vectors.parquet").is_file():
        raise SystemExit("no vectors: run `kedro run --pipeline=data_processing` first")
    curves = {}
    with tempfile.TemporaryDirectory() as tmp:
        queue, running = list(names), []
        while queue or running:
            while queue and len(running) < args.parallel:
                name = queue.pop(0)
                out = Path(tmp) / f"{name}.json"
                cmd = [sys.executable, __file__, "--one", name, "--out", str(out), "--minutes", str(args.minutes),
                       "--threads", str(args.threads), "--eval-every", str(args.eval_every)]
                print(f"{name}: {args.minutes:g} min, {args.threads} thread(s) ...", flush=True)
                running.append((name, out, subprocess.Popen(cmd)))
            time.sleep(1)
            for item in [r for r in running if r[2].poll() is not None]:
                running.remove(item)
                name, out, proc = item
                if proc.returncode:
                    raise SystemExit(f"trainer {name} failed (exit code {proc.returncode})")
                curves[name] = json.loads(out.read_text("utf-8"))
    report(args, names, curves)


def report(args: argparse.Namespace, names: list, runs: dict) -> None:
    budget = args.minutes * 60
    marks = [round(budget * m, 3) for m in MARKS]
    table, results = [], {"minutes": args.minutes, "threads": args.threads, "parallel": args.parallel,
                          "marks_s": marks, "trainers": runs}
    for name in names:
        curve = runs[name]["curve"]
        table.append((f"val perplexity of {name} at {', '.join(f'{m / 60:g}' for m in marks)} min",
                      " / ".join(f"{at(curve, m):.1f}" for m in marks)))
    if "project" in runs:
        project = runs["project"]["curve"]
        results["project_seconds_to_peer_final"] = {}
        for name in names:
            if name == "project":
                continue
            final = runs[name]["curve"][-1]
            reached = time_to(project, final["val_loss"])
            results["project_seconds_to_peer_final"][name] = reached
            first = reached is not None and reached <= project[0]["seconds"]  # reached by the first copy
            table.append((f"project: time to {name}'s final perplexity ({final['val_perplexity']:.1f})",
                          f"{'≤ ' if first else ''}{reached:.0f} s ({'≥ ' if first else ''}{budget / reached:.1f}× "
                          f"sooner)" if reached else "not reached"))
        best = min(names, key=lambda n: runs[n]["curve"][-1]["val_loss"])
        table.append(("lowest final perplexity", f"{best} (target: project, ≤ 105 at 10 min)"))
    write_results("peers" if args.minutes >= 10 else "peers_dry", results, table)
    for k, v in table:
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
