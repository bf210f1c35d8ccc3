"""Generate: model + vocabulary + prosody → poems (JSON records and a Markdown page) → report.

Every check that can fail is done before any decoding: the model was trained on this vocabulary
(fingerprint), the begin / acrostic characters are in it, the device exists.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pandas as pd
import torch

from tangshi_pipeline.poet.artifact import Artifact, vocabulary_mismatch
from tangshi_pipeline.poet.constraints import is_hanzi
from tangshi_pipeline.poet.decoding import Decoder
from tangshi_pipeline.poet.params import GenerateParams, parse
from tangshi_pipeline.poet.prosody import FORM_NAMES, FORMS, Prosody, check, clauses, sentences
from tangshi_pipeline.poet.vocab import Vocab


class GenerationError(ValueError):
    """Generation cannot start; the message names the value and what to do."""


def _check_inputs(model: Artifact, vocab: Vocab, p: GenerateParams) -> None:
    if problem := vocabulary_mismatch(model, vocab):
        raise GenerationError(
            f"{problem}: retrain with `kedro run --pipelines=training`, or pin a model trained on this "
            f"vocabulary with --load-versions=model:<version>."
        )
    index = vocab.index
    where, chars = ("generate.acrostic", p.acrostic) if p.acrostic else ("generate.begin_words", p.begin_words)
    for ch in chars:
        if ch not in index or not is_hanzi(ch):
            raise GenerationError(
                f"{where}: character {ch!r} is not in the model's vocabulary"
                f"{' (it is a special token or punctuation)' if ch in index else ''}: "
                f"use characters seen in the corpus (the dataset `vocab`)."
            )
    for word in p.keywords:
        if not all(c in index and is_hanzi(c) for c in word):
            raise GenerationError(
                f"generate.keywords: {word!r} is not made of characters of the model's vocabulary: use "
                f"characters (or two-character words) seen in the corpus (the dataset `vocab`).")
    if p.keywords and not model.themed:
        raise GenerationError(
            f"generate.keywords = {list(p.keywords)}: model version {model.version or '(unversioned)'} was "
            f"trained without themes, so it cannot read keywords. Retrain it "
            f"(`kedro run --pipelines=training`, with training.keyword_dropout < 1) or set generate.keywords: [].")
    if p.form in FORMS and not all(c in index for c in "，。"):
        raise GenerationError(f"generate.form = {p.form!r}: the vocabulary has no ， or 。; use form free.")
    if p.device != "cpu":
        try:
            torch.empty(0, device=p.device)
        except (RuntimeError, AssertionError) as exc:
            raise GenerationError(f"generate.device = {p.device!r} is not available ({exc}); use cpu.") from None


def poem_heads(p: GenerateParams) -> tuple[list[str | None], list[str | None]]:
    """The begin character and acrostic of each poem, in order (shared with the studio server)."""
    if p.acrostic:
        return [None] * p.num_samples, [p.acrostic] * p.num_samples
    begins = [b for b in p.begin_words for _ in range(p.num_samples)]
    return begins, [None] * len(begins)


def generate_poems(model: Artifact, vocab: dict, tone_lexicon: dict, rhyme_table: dict, vectors: pd.DataFrame,
                   params: dict) -> tuple[list[dict], str]:
    """Write ``num_samples`` poems per begin character (or for the acrostic), in batches, each with
    its score (the model's mean log-probability per character; a beam's poems come best first). The
    training split's lines (from ``vectors``) are read only for ``no_copy``."""
    p = parse(GenerateParams, "generate", params)
    v = Vocab.from_json(vocab)
    _check_inputs(model, v, p)
    lines = training_clauses(vectors, v) if p.no_copy else ()
    decoder = Decoder(model.model, v, Prosody.from_json(tone_lexicon, rhyme_table), p.device, lines)
    begins, acrostics = poem_heads(p)
    poems = decoder.generate(begins, acrostics, p, p.batch_size)
    settings = p.model_dump(exclude={"begin_words", "acrostic", "batch_size", "device"})
    records = [
        {"begin": begin, "acrostic": acrostic, "form": p.form, "text": text, "lines": sentences(text),
         "template": template, "fallbacks": fallbacks, "score": score, "settings": settings}
        for begin, acrostic, text, template, fallbacks, score
        in zip(begins, acrostics, poems.texts, poems.templates, poems.fallbacks, poems.scores)
    ]
    return records, render_page(records, p)


def render_page(records: list[dict], p: GenerateParams) -> str:
    """A readable Markdown page: one section per begin character / acrostic, one sentence per line."""
    how = f"beam search, beam size {p.beam_size}" if p.strategy == "beam" else p.strategy
    theme = f"theme {' '.join(p.keywords)}, " if p.keywords else ""
    settings = theme + how + (f", temperature {p.temperature}, top-k {p.top_k or 'off'}, top-p {p.top_p}, "
                              f"seed {p.seed}" if p.strategy == "sample" else "")
    if p.form in FORMS:
        settings += f", tones {p.tones}, rhyme {'on' if p.rhyme else 'off'}" + (", no copied lines" if p.no_copy else "")
    if p.no_repeat_ngram:
        settings += f", no repeated {p.no_repeat_ngram}-grams"
    out = [f"# Generated poems — {FORM_NAMES[p.form]} ({p.form})", "", f"Decoding: {settings}.", ""]
    for key, group in pd.DataFrame(records).groupby(["acrostic", "begin"], dropna=False, sort=False):
        acrostic, begin = key
        out += [f"## {'藏头 ' + acrostic if isinstance(acrostic, str) else begin}", ""]
        for record in group.to_dict("records"):
            note = f" <sub>{record['template']}</sub>" if record["template"] else ""
            out += [line + "  " for line in record["lines"]]
            out[-1] = out[-1].rstrip() + note
            out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------------------------- report


def _distinct(texts: list[str], n: int) -> float:
    grams = [c[i:i + n] for t in texts for c in clauses(t) for i in range(len(c) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def training_clauses(vectors: pd.DataFrame, vocab: Vocab) -> set[str]:
    """Every clause (verse line) of the training split, for the copy rate."""
    train = vectors.loc[vectors["split"] == "train", "ids"]
    return {c for ids in train for c in clauses(vocab.decode(ids))}


def poem_report(texts: list[str], form: str, prosody: Prosody, reference: set[str] | None = None) -> dict[str, Any]:
    """Format, tone, rhyme, diversity and copying figures for a set of poems of one form."""
    report: dict[str, Any] = {"poems": len(texts), "form": form}
    lines = [c for t in texts for c in clauses(t)]
    if form in FORMS:
        checks = [check(t, prosody, form) for t in texts]
        shaped = [c for c in checks if c.template is not None]
        n_lines, n_chars = FORMS[form]
        per_position = []
        for i in range(n_lines):
            row = []
            for j in range(n_chars):
                seen = [c.fits[i][j] for c in shaped if c.fits[i][j] is not None]
                row.append(round(sum(seen) / len(seen), 4) if seen else None)
            per_position.append(row)
        n = max(len(texts), 1)
        report.update({
            "format_accuracy": sum(c.format_ok for c in checks) / n,
            "tonal_conformance": sum(c.conforms for c in checks) / n,
            "tonal_position_mean": sum(c.tone_share for c in checks) / n,
            "tonal_per_position": per_position,
            "rhyme_accuracy": sum(c.rhymes for c in checks) / n,
            "templates": dict(Counter(c.template for c in checks if c.conforms).most_common()),
        })
    else:
        report["mean_length"] = sum(map(len, texts)) / max(len(texts), 1)
    report["distinct_1"] = _distinct(texts, 1)
    report["distinct_2"] = _distinct(texts, 2)
    if reference is not None:
        report["copy_rate"] = sum(c in reference for c in lines) / max(len(lines), 1)
    return report


def report_generation(generated_poems: list[dict], vectors: pd.DataFrame, vocab: dict,
                      tone_lexicon: dict, rhyme_table: dict, params: dict) -> dict[str, Any]:
    """The generation report: format accuracy, tonal conformance, rhyme accuracy, distinct-1/2,
    copy rate (share of generated lines found verbatim in the training split), fallbacks, and the
    poems' mean score (the model's mean log-probability per character, nats).

    It takes the whole ``generate`` section (``params:generate``): the report records the settings
    the poems were made with (all but ``batch_size`` and ``device``), and ``generate_poems``, which
    reads the whole section too, re-runs on any change of it anyway."""
    p = parse(GenerateParams, "generate", params)
    prosody = Prosody.from_json(tone_lexicon, rhyme_table)
    texts = [r["text"] for r in generated_poems]
    report = poem_report(texts, p.form, prosody, training_clauses(vectors, Vocab.from_json(vocab)))
    report["fallback_steps"] = sum(r["fallbacks"] for r in generated_poems)
    report["poems_with_fallback"] = sum(r["fallbacks"] > 0 for r in generated_poems)
    report["mean_score"] = sum(r["score"] for r in generated_poems) / max(len(generated_poems), 1)
    report["settings"] = p.model_dump(exclude={"batch_size", "device"})
    return report
