"""Beam search under the masks: greedy at beam size 1, every mask on every hypothesis, better scores."""

from __future__ import annotations

import pytest
import torch

from tangshi_pipeline.poet.decoding import Decoder
from tangshi_pipeline.poet.prosody import FORMS, check, clauses, format_ok
from tests.helpers_models import pingshui_prosody, tiny_model
from tests.test_decoding import BEGINS, settings

ALL_FORMS = ["free", *sorted(FORMS)]


def rules(form: str, **changes) -> dict:
    """Free verse as it is; a form with strict tones and rhyme."""
    return {"form": form, **({} if form == "free" else {"tones": "strict", "rhyme": True}), **changes}


@pytest.fixture(scope="module")
def setup():
    vocab, prosody, _, _ = pingshui_prosody()
    return vocab, prosody, Decoder(tiny_model(len(vocab), seed=6), vocab, prosody)


def poems(decoder, begins, **params):
    return decoder.generate(begins, [None] * len(begins), settings(**params))


@pytest.mark.parametrize("form", ALL_FORMS)
def test_beam_size_1_is_greedy(setup, form):
    _, _, decoder = setup
    begins = BEGINS * 2
    greedy = poems(decoder, begins, **rules(form))
    beam = poems(decoder, begins, **rules(form, strategy="beam", beam_size=1))
    assert beam.texts == greedy.texts and beam.templates == greedy.templates
    assert beam.scores == pytest.approx(greedy.scores, abs=1e-6)
    assert poems(decoder, begins, **rules(form, strategy="beam", beam_size=4)).texts != greedy.texts


def test_beam_size_1_is_greedy_when_the_end_token_stops_a_poem(setup):
    vocab, prosody, _ = setup
    model = tiny_model(len(vocab), seed=1)
    with torch.no_grad():  # the end token becomes the argmax after a few steps
        model.head.bias[3] = 5.0
    decoder = Decoder(model, vocab, prosody)
    greedy = poems(decoder, BEGINS)
    assert all(len(t) < 30 for t in greedy.texts)
    assert poems(decoder, BEGINS, strategy="beam", beam_size=1).texts == greedy.texts
    acrostics = ["春江花月", "明月"]
    g = decoder.generate([None, None], acrostics, settings())
    assert decoder.generate([None, None], acrostics, settings(strategy="beam", beam_size=1)).texts == g.texts


@pytest.mark.parametrize("form", sorted(FORMS))
def test_every_hypothesis_keeps_every_mask(setup, form):
    """Shape, acrostic heads, strict tones, one rhyme group with no 重韵, no pair twice, no training
    line — for each of a beam's four best poems."""
    vocab, prosody, _ = setup
    model = tiny_model(len(vocab), seed=2)
    with torch.no_grad():  # favourites the masks must hold back: a rhyme character and a common pair
        for ch, boost in (("楼", 8.0), ("风", 5.0), ("花", 5.0)):
            model.head.bias[vocab.index[ch]] += boost
    n_lines = FORMS[form][0]
    heads = "春江花月夜山水风"[:n_lines]
    kw = rules(form, strategy="beam", beam_size=8, num_samples=4, no_repeat_ngram=2)
    begins, acrostics = [None] * 4 + ["日"] * 4, [heads] * 4 + [None] * 4
    plain = Decoder(model, vocab, prosody).generate(begins, acrostics, settings(**kw))
    training = {c for t in plain.texts for c in clauses(t)}  # pretend the beam's own lines are the training set
    decoder = Decoder(model, vocab, prosody, training_lines=training)
    out = decoder.generate(begins, acrostics, settings(**kw, no_copy=True))
    assert sum(out.fallbacks) == 0 and len(set(out.texts)) == 8  # four distinct poems per beam
    for k, text in enumerate(out.texts):
        assert format_ok(text, form)
        assert [c[0] for c in clauses(text)] == list(heads) if k < 4 else text[0] == "日"
        verdict = check(text, prosody, form)
        assert verdict.conforms and verdict.rhymes and not verdict.rhyme_repeated, text
        assert verdict.template == out.templates[k]
        assert not set(clauses(text)) & training, text
        pairs = [c[i:i + 2] for c in clauses(text) for i in range(len(c) - 1)]
        assert len(pairs) == len(set(pairs)), text
    loose = decoder.generate([None] * 8, [heads] * 8, settings(form=form, strategy="beam", num_samples=8))
    assert sum(check(t, prosody, form).conforms for t in loose.texts) < 4  # without the masks: broken


def test_free_beams_keep_the_line_shape_the_heads_and_no_repeats(setup):
    _, _, decoder = setup
    s = settings(strategy="beam", beam_size=6, num_samples=3, no_repeat_ngram=1, max_length=16)
    out = decoder.generate(["日"] * 3 + [None] * 3, [None] * 3 + ["春江花月"] * 3, s)
    for text in out.texts[:3]:
        assert text[0] == "日" and len(text) <= 16
    for text in out.texts[3:]:
        lines = clauses(text)
        assert [c[0] for c in lines] == list("春江花月") and text.endswith("。")
        assert all(3 <= len(c) <= 7 for c in lines)
    for text in out.texts:
        chars = "".join(clauses(text))
        assert len(set(chars)) == len(chars), text


@pytest.mark.parametrize("form", ALL_FORMS)
def test_a_beam_s_poems_are_scored_ranked_and_distinct(setup, form):
    _, _, decoder = setup
    begins = [b for b in "日月山" for _ in range(4)]
    out = poems(decoder, begins, **rules(form, strategy="beam", beam_size=6, num_samples=4))
    assert out.scores == pytest.approx(decoder.mean_logprobs(out.texts), abs=1e-5)
    for k in range(0, 12, 4):
        assert out.scores[k:k + 4] == sorted(out.scores[k:k + 4], reverse=True)
        assert len(set(out.texts[k:k + 4])) == 4 and {t[0] for t in out.texts[k:k + 4]} == {begins[k]}
    with pytest.raises(ValueError, match="give each .* 4 times in a row"):
        poems(decoder, list("日月日月"), **rules(form, strategy="beam", beam_size=6, num_samples=4))


@pytest.mark.parametrize("form", ALL_FORMS)
def test_beam_8_scores_above_greedy(setup, form):
    _, _, decoder = setup
    begins = BEGINS * 2
    greedy = poems(decoder, begins, **rules(form)).scores
    beam = poems(decoder, begins, **rules(form, strategy="beam", beam_size=8)).scores
    assert sum(beam) > sum(greedy)
    assert sum(b >= g - 1e-6 for b, g in zip(beam, greedy)) >= 0.9 * len(begins)


def test_a_beam_is_the_same_in_any_batch(setup):
    _, _, decoder = setup
    begins = [b for b in BEGINS for _ in range(2)]
    s = settings(**rules("qijue", strategy="beam", beam_size=4, num_samples=2, no_repeat_ngram=2))
    whole = decoder.generate(begins, [None] * 14, s)
    assert decoder.generate(begins, [None] * 14, s, batch_size=3).texts == whole.texts
    assert decoder.generate(begins[4:6], [None] * 2, s).texts == whole.texts[4:6]
