"""Batched decoding: state caching, shapes by construction, strict tones and rhyme, sampling."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tangshi_pipeline.decoding import Decoder, Settings, greedy_refeed
from tangshi_pipeline.prosody import FORMS, check, clauses, format_ok
from tests.generate_helpers import pingshui_prosody, tiny_model

BEGINS = list("日红山夜湖君月")


@pytest.fixture(scope="module")
def setup():
    vocab, prosody, _, _ = pingshui_prosody()
    return vocab, prosody, Decoder(tiny_model(len(vocab)), vocab, prosody)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_state_cache_gives_the_same_greedy_poems_as_refeeding_the_prefix(setup, cell):
    vocab, prosody, _ = setup
    model = tiny_model(len(vocab), cell=cell, seed=3)
    begins = BEGINS + list("春江花风雨")
    cached = Decoder(model, vocab, prosody).generate(begins, [None] * len(begins), Settings(max_length=30))
    refed = [greedy_refeed(model, vocab, b, 30) for b in begins]
    assert cached.texts == refed
    assert all(t[0] == b and len(t) <= 30 for t, b in zip(cached.texts, begins))


def test_the_end_token_stops_a_free_poem(setup):
    vocab, prosody, _ = setup
    model = tiny_model(len(vocab), seed=1)
    with torch.no_grad():  # make the end token the argmax after a few steps
        model.head.bias[3] = 5.0
    out = Decoder(model, vocab, prosody).generate(["日"], [None], Settings())
    assert out.texts == [greedy_refeed(model, vocab, "日")] and len(out.texts[0]) < 30


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(form=st.sampled_from(sorted(FORMS)), seed=st.integers(0, 2**31 - 1),
       strategy=st.sampled_from(["greedy", "sample"]), top_k=st.sampled_from([0, 5]),
       strict=st.booleans(), acrostic=st.booleans())
def test_forms_always_have_the_right_shape(setup, form, seed, strategy, top_k, strict, acrostic):
    vocab, _, decoder = setup
    n_lines = FORMS[form][0]
    s = Settings(form=form, strategy=strategy, top_k=top_k, top_p=0.95, seed=seed,
                 strict_tones=strict, rhyme=strict, temperature=1.5)
    heads = "春江花月夜山水风"[:n_lines]
    out = decoder.generate([None if acrostic else "日"] * 6, [heads if acrostic else None] * 6, s, batch_size=4)
    for text in out.texts:
        assert format_ok(text, form), text
        starts = [c[0] for c in clauses(text)]
        assert starts == list(heads) if acrostic else starts[0] == "日"


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("strategy", ["greedy", "sample"])
def test_strict_tones_and_rhyme_never_emit_a_violating_character(setup, form, strategy):
    vocab, prosody, decoder = setup
    s = Settings(form=form, strategy=strategy, strict_tones=True, rhyme=True, temperature=2.0, top_p=1.0, seed=7)
    begins = [BEGINS[i % 7] for i in range(40)]
    out = decoder.generate(begins, [None] * len(begins), s)
    assert sum(out.fallbacks) == 0
    for text, template in zip(out.texts, out.templates):
        result = check(text, prosody, form)
        assert result.format_ok and result.conforms and result.rhymes, (text, result)
    # the same model without the masks breaks the rules (so the check above can fail)
    loose = decoder.generate(begins, [None] * len(begins), Settings(form=form, strategy=strategy, seed=7))
    assert sum(check(t, prosody, form).conforms for t in loose.texts) < len(begins) / 2


def test_an_acrostic_character_that_fits_no_template_falls_back_and_is_counted(setup):
    vocab, prosody, decoder = setup
    ze = next(c for c in vocab.tokens[6:] if prosody.tone(c) == "仄" and c not in prosody.char_groups)
    # five characters: the 2nd line of every template needs 平 at its 1st position (孤平) or …
    s = Settings(form="wujue", strict_tones=True, rhyme=True)
    out = decoder.generate([None], [f"春{ze}{ze}{ze}"], s)
    assert format_ok(out.texts[0], "wujue") and [c[0] for c in clauses(out.texts[0])] == list(f"春{ze}{ze}{ze}")
    assert out.fallbacks[0] >= 0  # never an error; any conflict is counted, not hidden


def test_same_seed_same_poems_and_sampling_knobs(setup):
    vocab, _, decoder = setup
    begins = BEGINS * 3
    s = Settings(strategy="sample", top_p=0.9, temperature=1.0, seed=11)
    a = decoder.generate(begins, [None] * len(begins), s, batch_size=8)
    b = decoder.generate(begins, [None] * len(begins), s, batch_size=8)
    c = decoder.generate(begins, [None] * len(begins), Settings(strategy="sample", top_p=0.9, temperature=1.0, seed=12))
    assert a.texts == b.texts and a.texts != c.texts
    top1 = decoder.generate(begins, [None] * len(begins), Settings(strategy="sample", top_k=1, seed=5))
    greedy = decoder.generate(begins, [None] * len(begins), Settings())
    assert top1.texts == greedy.texts
    plain = decoder.generate(begins, [None] * len(begins), Settings(strategy="sample", top_p=1.0, seed=5))
    assert len(set(plain.texts)) == len(begins)


def test_free_acrostic_lines_start_with_its_characters(setup):
    vocab, _, decoder = setup
    out = decoder.generate([None, None], ["春江花月夜", "明月"], Settings(strategy="sample", seed=3))
    for text, acrostic in zip(out.texts, ["春江花月夜", "明月"]):
        lines = clauses(text)
        assert [c[0] for c in lines] == list(acrostic) and text.endswith("。")
        assert all(3 <= len(c) <= 7 for c in lines)


def test_max_length_caps_a_free_poem(setup):
    vocab, _, decoder = setup
    out = decoder.generate(BEGINS, [None] * 7, Settings(max_length=12))
    assert all(len(t) <= 12 for t in out.texts)


@pytest.mark.parametrize("width", [4, 3000])
def test_top_p_keeps_the_smallest_set_reaching_p(width):
    from tangshi_pipeline.decoding import _nucleus

    probs = torch.linspace(2.0, 1.0, width) ** 4  # strictly decreasing
    probs /= probs.sum()
    needed = int((probs.cumsum(0) < 0.6).sum()) + 1  # tokens needed to reach 0.6
    gen = torch.Generator().manual_seed(0)
    drawn = _nucleus(probs.log().repeat(4000, 1), 0.6, gen)
    assert int(drawn.max()) <= needed - 1 and int(drawn.max()) >= 0.9 * (needed - 1) and int(drawn.min()) == 0
