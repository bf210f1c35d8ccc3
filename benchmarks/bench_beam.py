"""Beam search vs greedy under the same masks: the model's mean log-probability per character of the
poems (their score) and poems per second, for each form — free verse as it is, the regulated forms
with strict tones and rhyme.

Both decode the same begin characters with the same model in one process, timed alternately (greedy,
beam, greedy, beam …; the median of ``--repeats``), so both see the same machine. Also counted: the
share of poems whose beam score is at least greedy's, and for the forms the share of beam poems that
pass the checker (format, tones, rhyme) — 100 % by construction.

The model is the latest version in ``<project>/data/06_models/poet`` with that project's vocabulary
and prosody tables (``--project``, default: this repository). Results go to
``benchmarks/results/beam.{json,md}``.

    python benchmarks/bench_beam.py [--project PATH] [--poems 256] [--beam 8] [--threads 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import generate_params, generation_inputs, write_results  # noqa: E402

from tangshi_pipeline.poet.decoding import Decoder  # noqa: E402
from tangshi_pipeline.poet.prosody import FORMS, check  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BEGINS = list("日红山夜湖君月")


def measure(decoder: Decoder, begins: list[str], settings: dict, repeats: int) -> dict:
    """Greedy and beam on the same poems, timed alternately: scores, poems/s, checker pass rates."""
    walls = {name: [] for name in settings}
    out = {}
    for name, s in settings.items():  # warm-up, and the poems
        out[name] = decoder.generate(begins, [None] * len(begins), s, batch_size=len(begins))
    for _ in range(repeats):
        for name, s in settings.items():
            start = time.perf_counter()
            decoder.generate(begins, [None] * len(begins), s, batch_size=len(begins))
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            walls[name].append(time.perf_counter() - start)
    result = {}
    for name, poems in out.items():
        wall = statistics.median(walls[name])
        result[name] = {"mean_score": round(statistics.fmean(poems.scores), 4),
                        "poems_per_s": round(len(begins) / wall, 1), "wall_s": round(wall, 3),
                        "fallback_steps": sum(poems.fallbacks), "example": poems.texts[0]}
    greedy, beam = out["greedy"].scores, out["beam"].scores
    result["beam_at_least_greedy"] = round(sum(b >= g - 1e-6 for b, g in zip(beam, greedy)) / len(begins), 4)
    form = settings["beam"].form
    if form in FORMS:
        verdicts = [check(t, decoder.prosody, form) for t in out["beam"].texts]
        result["beam_checker_pass"] = sum(v.format_ok and v.conforms and v.rhymes for v in verdicts) / len(begins)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", type=Path, default=ROOT, help="the Kedro project whose data/ holds the model")
    ap.add_argument("--poems", type=int, default=256)
    ap.add_argument("--beam", type=int, default=8, help="beam_size")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    vocab, _, prosody, artifact = generation_inputs(project=args.project)
    decoder = Decoder(artifact.model, vocab, prosody, args.device)
    begins = [BEGINS[i % len(BEGINS)] for i in range(args.poems)]
    results = {"model": f"{args.project.name}: {artifact.version}", "device": args.device, "poems": args.poems,
               "beam_size": args.beam, "threads": torch.get_num_threads(), "forms": {}}
    table = []
    for form in ["free", *FORMS]:
        rules = {"form": form} if form == "free" else {"form": form, "tones": "strict", "rhyme": True}
        settings = {"greedy": generate_params(**rules),
                    "beam": generate_params(**rules, strategy="beam", beam_size=args.beam)}
        r = results["forms"][form] = measure(decoder, begins, settings, args.repeats)
        g, b = r["greedy"], r["beam"]
        table.append((f"{form}: mean log-prob / char, greedy → beam {args.beam}",
                      f"{g['mean_score']:.3f} → **{b['mean_score']:.3f}** (beam ≥ greedy for "
                      f"{r['beam_at_least_greedy']:.0%} of poems)"))
        table.append((f"{form}: poems/s, greedy → beam {args.beam}",
                      f"{g['poems_per_s']:,.0f} → {b['poems_per_s']:,.0f}"))
        print(f"{form:6s} score {g['mean_score']:.3f} → {b['mean_score']:.3f}   poems/s {g['poems_per_s']:,.0f} → "
              f"{b['poems_per_s']:,.0f}", flush=True)
    table.append(("conditions", f"{args.poems} poems per form ({''.join(BEGINS)} in turn), {args.device}, "
                                f"{torch.get_num_threads()} thread(s), median of {args.repeats}; "
                                "forms: strict tones + rhyme"))
    table.append(("model", results["model"]))
    write_results("beam", results, table)


if __name__ == "__main__":
    main()
