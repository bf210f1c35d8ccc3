"""Each generate node called directly on tiny in-memory inputs: a tiny model over the 平水韵
vocabulary, hand-made vectors and poem records."""

from __future__ import annotations

import pytest
import torch

from tangshi_pipeline.pipelines.generate.nodes import generate_poems, render_page, report_generation
from tangshi_pipeline.poet.artifact import Artifact
from tangshi_pipeline.poet.decoding import Decoder
from tangshi_pipeline.poet.params import GenerateParams, parse
from tangshi_pipeline.poet.prosody import check, clauses, sentences
from tangshi_pipeline.poet.vocab import Vocab
from tests.helpers import shipped_params
from tests.helpers_models import POEMS, pingshui_prosody, tiny_model, vectors_of


@pytest.fixture(scope="module")
def poet():
    """(model, vocab JSON, tone lexicon, rhyme table, vectors, prosody). The weights are drawn by
    parameter name, so they do not depend on the order in which the model creates its layers."""
    vocab, prosody, lexicon, rhyme = pingshui_prosody()
    model = tiny_model(len(vocab))
    draw = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, tensor in sorted(model.state_dict().items()):
            tensor.copy_(torch.randn(tensor.shape, generator=draw) * 0.3)
    artifact = Artifact(model, {"vocab_fingerprint": vocab.fingerprint})
    vectors = vectors_of(vocab, POEMS, ["train", "train", "train", "val", "test"])
    return artifact, vocab.to_json(), lexicon, rhyme, vectors, prosody


def params(**overrides) -> dict:
    return {**shipped_params("generate"), **overrides}


def generate(poet, **overrides) -> tuple[list[dict], str]:
    model, vocab, lexicon, rhyme, vectors, _ = poet
    return generate_poems(model, vocab, lexicon, rhyme, vectors, params(**overrides))


# ------------------------------------------------------------------------------ generate_poems

def test_one_record_per_begin_character_and_sample_in_order(poet):
    records, page = generate(poet, begin_words=["日", "月"], num_samples=2, max_length=12)
    assert [r["begin"] for r in records] == ["日", "日", "月", "月"]
    assert all(r["text"][0] == r["begin"] and len(r["text"]) <= 12 for r in records)
    assert records[0]["text"] == records[1]["text"]  # greedy: the samples of one begin are the same
    assert set(records[0]) == {"begin", "acrostic", "form", "text", "lines", "template", "fallbacks", "score",
                               "settings"}
    assert set(records[0]["settings"]) == set(params()) - {"begin_words", "acrostic", "batch_size", "device"}
    assert page.startswith("# Generated poems") and "## 日" in page and "## 月" in page


# The greedy poems of this fixed model, recorded before issue 14's redesign: decoding must not change them.
GREEDY = {
    "日": "日锋悔悔绣悔婵悔婵悔关悔绣悔绣悔关悔绣悔关悔绣悔悔绣关悔关悔",
    "月": "月锋悔悔悔悔绣悔关悔绣悔关悔绣悔绣悔关悔绣悔关悔绣悔悔关悔绣",
    "藏头 白日依山": "白锋悔悔悔，日悔悔婵关。依悔悔关悔，山关悔悔鹇。",
}


def test_greedy_poems_of_a_fixed_model_are_the_recorded_ones(poet):
    free, _ = generate(poet, begin_words=["日", "月"])
    wujue, _ = generate(poet, form="wujue", acrostic="白日依山", tones="strict", rhyme=True)
    assert [r["text"] for r in free + wujue] == list(GREEDY.values())


def test_sampled_acrostic_quatrains_fit_the_form_tones_and_rhyme(poet):
    *_, prosody = poet
    settings = dict(form="wujue", acrostic="白日依山", strategy="sample", num_samples=3, tones="strict",
                    rhyme=True, seed=1, no_copy=True, no_repeat_ngram=2)
    records, page = generate(poet, **settings)
    assert len(records) == 3 and all(r["acrostic"] == "白日依山" and r["begin"] is None for r in records)
    for r in records:
        assert [c[0] for c in clauses(r["text"])] == list("白日依山")
        verdict = check(r["text"], prosody, "wujue")
        assert verdict.format_ok and verdict.conforms and verdict.rhymes, r["text"]
    assert [r["text"] for r in generate(poet, **settings)[0]] == [r["text"] for r in records]  # seeded
    assert len({r["text"] for r in records}) == 3
    assert "## 藏头 白日依山" in page


@pytest.mark.parametrize("changes", [dict(), dict(strategy="sample", num_samples=2),
                                     dict(form="qijue", tones="strict", rhyme=True, strategy="beam", beam_size=4,
                                          num_samples=3)])
def test_every_poem_is_written_with_its_score(poet, changes):
    model, vocab, *_ = poet
    records, page = generate(poet, begin_words=["日", "月"], **changes)
    decoder = Decoder(model.model, Vocab.from_json(vocab))
    expected = decoder.mean_logprobs([r["text"] for r in records])
    assert [r["score"] for r in records] == pytest.approx(expected, abs=1e-5)
    if changes.get("strategy") == "beam":  # a beam's three best, best first, for each begin character
        assert [r["begin"] for r in records] == ["日"] * 3 + ["月"] * 3 and len({r["text"] for r in records}) == 6
        assert all(records[k]["score"] >= records[k + 1]["score"] for k in (0, 1, 3, 4))
        assert "Decoding: beam search, beam size 4, tones strict" in page


def test_a_model_of_another_vocabulary_is_refused_before_decoding(poet):
    model, vocab, lexicon, rhyme, vectors, _ = poet
    stranger = Artifact(model.model, {"vocab_fingerprint": "0" * 64})
    with pytest.raises(ValueError, match=r"kedro run --pipelines=training"):
        generate_poems(stranger, vocab, lexicon, rhyme, vectors, params())


def test_a_begin_character_outside_the_vocabulary_is_named(poet):
    with pytest.raises(ValueError, match="generate.begin_words: character '龘' is not in the model's vocabulary"):
        generate(poet, begin_words=["日", "龘"])


# --------------------------------------------------------------------------------- render_page

def record(text: str, begin: str | None = None, acrostic: str | None = None, template: str | None = None) -> dict:
    return {"begin": begin, "acrostic": acrostic, "form": "wujue", "text": text, "lines": sentences(text),
            "template": template, "fallbacks": 0, "score": -4.0, "settings": {}}


def test_page_has_a_section_per_begin_character_and_markdown_line_breaks():
    records = [record(POEMS[1], begin="白"), record(POEMS[0], begin="床", template="仄起不入韵"),
               record(POEMS[1], begin="白")]
    page = render_page(records, parse(GenerateParams, "generate", params(form="wujue", strategy="sample", seed=7)))
    lines = page.splitlines()
    assert lines[0] == "# Generated poems — 五言绝句 (wujue)"
    assert lines[2].startswith("Decoding: sample, temperature 0.8, top-k off, top-p 0.9, seed 7, tones loose")
    assert [line for line in lines if line.startswith("## ")] == ["## 白", "## 床"]  # grouped, first seen first
    assert "床前明月光，疑是地上霜。  " in lines  # two trailing spaces: a Markdown line break
    assert "举头望明月，低头思故乡。 <sub>仄起不入韵</sub>" in lines


def test_page_names_an_acrostic_section_by_its_characters():
    page = render_page([record(POEMS[1], acrostic="白黄欲更")],
                       parse(GenerateParams, "generate", params(form="wujue", acrostic="白黄欲更")))
    assert "## 藏头 白黄欲更" in page.splitlines() and "Decoding: greedy, tones loose, rhyme off." in page


# --------------------------------------------------------------------------- report_generation

def test_report_counts_format_copies_diversity_and_fallbacks(poet):
    _, vocab, lexicon, rhyme, vectors, _ = poet
    copied, unseen = POEMS[0], POEMS[3]  # a training poem, and a validation one (not a copy)
    poems = [{**record(copied), "fallbacks": 2}, {**record(unseen), "fallbacks": 0},
             {**record("床前明月光，疑是地上霜。"), "fallbacks": 1}]
    report = report_generation(poems, vectors, vocab, lexicon, rhyme, params(form="wujue"))
    assert report["poems"] == 3 and report["form"] == "wujue"
    assert report["format_accuracy"] == pytest.approx(2 / 3)  # the half poem is not a quatrain
    assert report["copy_rate"] == pytest.approx(6 / 10)  # 4 + 2 of the 10 lines are training lines
    assert report["fallback_steps"] == 3 and report["poems_with_fallback"] == 2
    assert report["mean_score"] == pytest.approx(-4.0)
    lines = [c for p in poems for c in clauses(p["text"])]
    assert report["distinct_1"] == pytest.approx(len(set("".join(lines))) / len("".join(lines)))
    assert set(report["settings"]) == set(params()) - {"batch_size", "device"}


def test_report_of_free_poems_gives_their_mean_length(poet):
    _, vocab, lexicon, rhyme, vectors, _ = poet
    poems = [record("白日依山尽。"), record("床前明月光，疑是地上霜。")]
    report = report_generation(poems, vectors, vocab, lexicon, rhyme, params())
    assert report["mean_length"] == 9 and "format_accuracy" not in report
