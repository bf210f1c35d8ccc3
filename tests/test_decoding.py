"""Batched decoding: state caching, shapes by construction, strict tones and rhyme, sampling."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tangshi_pipeline.poet.decoding import Decoder, greedy_refeed
from tangshi_pipeline.poet.params import GenerateParams
from tangshi_pipeline.poet.prosody import FORMS, check, clauses, format_ok
from tests.helpers import shipped_params
from tests.helpers_models import pingshui_prosody, tiny_model

BEGINS = list("日红山夜湖君月")


def settings(**changes) -> GenerateParams:
    """The shipped generate parameters with ``changes``; top-p off (1) unless given, as in these scenarios."""
    return GenerateParams.model_validate({**shipped_params("generate"), "top_p": 1.0, **changes})


@pytest.fixture(scope="module")
def setup():
    vocab, prosody, _, _ = pingshui_prosody()
    return vocab, prosody, Decoder(tiny_model(len(vocab)), vocab, prosody)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_state_cache_gives_the_same_greedy_poems_as_refeeding_the_prefix(setup, cell):
    vocab, prosody, _ = setup
    model = tiny_model(len(vocab), cell=cell, seed=3)
    begins = BEGINS + list("春江花风雨")
    cached = Decoder(model, vocab, prosody).generate(begins, [None] * len(begins), settings(max_length=30))
    refed = [greedy_refeed(model, vocab, b, 30) for b in begins]
    assert cached.texts == refed
    assert all(t[0] == b and len(t) <= 30 for t, b in zip(cached.texts, begins))


def test_the_end_token_stops_a_free_poem(setup):
    vocab, prosody, _ = setup
    model = tiny_model(len(vocab), seed=1)
    with torch.no_grad():  # make the end token the argmax after a few steps
        model.head.bias[3] = 5.0
    out = Decoder(model, vocab, prosody).generate(["日"], [None], settings())
    assert out.texts == [greedy_refeed(model, vocab, "日")] and len(out.texts[0]) < 30


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(form=st.sampled_from(sorted(FORMS)), seed=st.integers(0, 2**31 - 1),
       strategy=st.sampled_from(["greedy", "sample"]), top_k=st.sampled_from([0, 5]),
       strict=st.booleans(), acrostic=st.booleans())
def test_forms_always_have_the_right_shape(setup, form, seed, strategy, top_k, strict, acrostic):
    vocab, _, decoder = setup
    n_lines = FORMS[form][0]
    s = settings(form=form, strategy=strategy, top_k=top_k, top_p=0.95, seed=seed,
                 tones="strict" if strict else "loose", rhyme=strict, temperature=1.5)
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
    s = settings(form=form, strategy=strategy, tones="strict", rhyme=True, temperature=2.0, top_p=1.0, seed=7)
    begins = [BEGINS[i % 7] for i in range(40)]
    out = decoder.generate(begins, [None] * len(begins), s)
    assert sum(out.fallbacks) == 0
    for text, template in zip(out.texts, out.templates):
        result = check(text, prosody, form)
        assert result.format_ok and result.conforms and result.rhymes, (text, result)
    # the same model without the masks breaks the rules (so the check above can fail)
    loose = decoder.generate(begins, [None] * len(begins), settings(form=form, strategy=strategy, seed=7))
    assert sum(check(t, prosody, form).conforms for t in loose.texts) < len(begins) / 2


def test_an_acrostic_character_that_fits_no_template_falls_back_and_is_counted(setup):
    vocab, prosody, decoder = setup
    ze = next(c for c in vocab.tokens[6:] if prosody.tone(c) == "仄" and c not in prosody.char_groups)
    # five characters: the 2nd line of every template needs 平 at its 1st position (孤平) or …
    s = settings(form="wujue", tones="strict", rhyme=True)
    out = decoder.generate([None], [f"春{ze}{ze}{ze}"], s)
    assert format_ok(out.texts[0], "wujue") and [c[0] for c in clauses(out.texts[0])] == list(f"春{ze}{ze}{ze}")
    assert out.fallbacks[0] >= 0  # never an error; any conflict is counted, not hidden


def test_same_seed_same_poems_and_sampling_knobs(setup):
    vocab, _, decoder = setup
    begins = BEGINS * 3
    s = settings(strategy="sample", top_p=0.9, temperature=1.0, seed=11)
    a = decoder.generate(begins, [None] * len(begins), s, batch_size=8)
    b = decoder.generate(begins, [None] * len(begins), s, batch_size=8)
    c = decoder.generate(begins, [None] * len(begins), settings(strategy="sample", top_p=0.9, temperature=1.0, seed=12))
    assert a.texts == b.texts and a.texts != c.texts
    top1 = decoder.generate(begins, [None] * len(begins), settings(strategy="sample", top_k=1, seed=5))
    greedy = decoder.generate(begins, [None] * len(begins), settings())
    assert top1.texts == greedy.texts
    plain = decoder.generate(begins, [None] * len(begins), settings(strategy="sample", top_p=1.0, seed=5))
    assert len(set(plain.texts)) == len(begins)


@pytest.mark.parametrize("form", ["free", "wulv"])
def test_a_poem_is_the_same_whatever_the_batch_size(setup, form):
    vocab, _, decoder = setup
    begins = [BEGINS[i % 7] for i in range(23)]
    regular = form != "free"
    s = settings(form=form, strategy="sample", top_p=0.95, temperature=1.2, seed=9,
                 tones="strict" if regular else "loose", rhyme=regular, no_repeat_ngram=2)
    whole = decoder.generate(begins, [None] * 23, s).texts
    assert decoder.generate(begins, [None] * 23, s, batch_size=5).texts == whole
    assert decoder.generate(begins[7:], [None] * 16, s).texts != whole[7:]  # a poem's index is part of its seed
    assert len(set(whole)) == 23


def test_uniform_draws_are_uniform_and_keyed_by_seed_poem_and_step():
    from tangshi_pipeline.poet.sampling import mix32, uniform

    poems = torch.arange(200_000)
    u = uniform(42, poems, 3)[:, 0]
    assert 0 <= float(u.min()) and float(u.max()) < 1
    counts = torch.histc(u, bins=20, min=0, max=1)
    assert float((counts / len(u) - 0.05).abs().max()) < 0.003  # within ~5 standard errors of flat
    assert abs(float(torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1])) < 0.01  # neighbours unrelated
    for other in (uniform(43, poems, 3), uniform(42, poems, 4), uniform(42, poems + 1, 3)):
        assert float((other[:, 0] == u).float().mean()) < 0.001
    xs = torch.tensor([0, 1, 2**31, 2**32 - 1])
    assert mix32(xs).tolist() == [mix32(int(x)) for x in xs.tolist()]  # tensors and ints agree
    assert mix32(1) == 0x514E28B7  # MurmurHash3's fmix32(1)
    assert len(set(mix32(torch.arange(100_000)).tolist())) == 100_000  # a bijection: no collisions


def test_sample_never_draws_a_zero_weight_token():
    from tangshi_pipeline.poet.sampling import sample

    weights = torch.tensor([[0.0, 3.0, 0.0, 1.0, 0.0]]).repeat(3, 1)
    u = torch.tensor([[0.0], [0.7499], [1.0 - 2**-24]])
    assert sample(weights, u).tolist() == [1, 1, 3]


def test_free_acrostic_lines_start_with_its_characters(setup):
    vocab, _, decoder = setup
    out = decoder.generate([None, None], ["春江花月夜", "明月"], settings(strategy="sample", seed=3))
    for text, acrostic in zip(out.texts, ["春江花月夜", "明月"]):
        lines = clauses(text)
        assert [c[0] for c in lines] == list(acrostic) and text.endswith("。")
        assert all(3 <= len(c) <= 7 for c in lines)


def test_max_length_caps_a_free_poem(setup):
    vocab, _, decoder = setup
    out = decoder.generate(BEGINS, [None] * 7, settings(max_length=12))
    assert all(len(t) <= 12 for t in out.texts)


@pytest.mark.parametrize("width", [4, 3000])
def test_top_p_keeps_the_smallest_set_reaching_p(width):
    from tangshi_pipeline.poet.sampling import nucleus

    probs = torch.linspace(2.0, 1.0, width) ** 4  # strictly decreasing
    probs /= probs.sum()
    needed = int((probs.cumsum(0) < 0.6).sum()) + 1  # tokens needed to reach 0.6
    u = torch.rand(4000, 1, generator=torch.Generator().manual_seed(0))
    drawn = nucleus(probs.log().repeat(4000, 1), 0.6, u)
    assert int(drawn.max()) <= needed - 1 and int(drawn.max()) >= 0.9 * (needed - 1) and int(drawn.min()) == 0


@pytest.mark.parametrize("tries", [4, 0])  # 0: every row beyond its top 64 is sorted instead
def test_top_p_draws_each_token_of_a_wide_nucleus_with_its_renormalised_probability(tries, monkeypatch):
    # a nucleus of ~300 tokens: beyond the top 64, drawn by rejection (or, with no tries left, sorted)
    from tangshi_pipeline.poet import sampling

    monkeypatch.setattr(sampling, "TRIES", tries)
    logits = torch.linspace(0.0, -6.0, 2000)[torch.randperm(2000, generator=torch.Generator().manual_seed(1))]
    logits[::7] = -torch.inf  # masked tokens, as tones and rhyme leave them
    probs = logits.softmax(-1)
    ranked, order = probs.sort(descending=True)
    keep = ranked.cumsum(0) - ranked < 0.9
    target = torch.zeros_like(probs)
    target[order[keep]] = ranked[keep] / ranked[keep].sum()
    n = 60_000
    u = torch.rand(n, 1, generator=torch.Generator().manual_seed(2))
    drawn = torch.cat([sampling.nucleus(logits.repeat(5000, 1), 0.9, u[i:i + 5000]) for i in range(0, n, 5000)])
    seen = torch.bincount(drawn, minlength=len(probs)).float() / n
    assert int(keep.sum()) > 200 and float(seen[target == 0].sum()) == 0.0  # never outside the nucleus
    noise = torch.bincount(torch.multinomial(target, n, replacement=True, generator=torch.Generator().manual_seed(3)),
                           minlength=len(probs)).float() / n
    tv, tv_noise = 0.5 * float((seen - target).abs().sum()), 0.5 * float((noise - target).abs().sum())
    assert tv < 1.3 * tv_noise, (tv, tv_noise)  # as close as exact sampling's own noise


def _repeated_pairs(text: str) -> int:
    pairs = [c[i:i + 2] for c in clauses(text) for i in range(len(c) - 1)]
    return len(pairs) - len(set(pairs))


def test_repeats_finds_what_would_repeat_an_ngram(setup):
    vocab, _, decoder = setup
    ids = lambda s: [vocab.index[c] for c in s]  # noqa: E731
    history = torch.tensor([ids("吹春风吹春风，春"), ids("山水山水，水山水")])
    pad = 0
    pairs = decoder.masks.repeats(history, 2)  # after 春: 风 (春风 seen); after 水: 山 (水山 seen, not 水，)
    assert sorted(set(pairs[0].tolist()) - {pad}) == ids("风")
    assert sorted(set(pairs[1].tolist()) - {pad}) == ids("山")
    triples = decoder.masks.repeats(history, 3)  # ，春 → nothing (punctuation); 山水 → 山 (山水山 seen)
    assert set(triples[0].tolist()) == {pad} and set(triples[1].tolist()) - {pad} == set(ids("山"))
    singles = set(decoder.masks.repeats(history, 1)[0].tolist()) - {pad}
    assert singles == set(ids("春风吹"))  # every character so far, never punctuation
    assert decoder.masks.repeats(history[:, :1], 3) is None


@pytest.mark.parametrize("form", ["free", "qilv"])
def test_no_repeat_ngram_never_repeats_a_pair_within_a_poem(setup, form):
    vocab, prosody, decoder = setup
    model = tiny_model(len(vocab), seed=5)
    with torch.no_grad():  # a strong favourite: without the rule the poems repeat it over and over
        model.head.bias[vocab.index["风"]] += 6.0
        model.head.bias[vocab.index["花"]] += 6.0
    decoder = Decoder(model, vocab, prosody)
    begins = [BEGINS[i % 7] for i in range(30)]
    for strategy in ("greedy", "sample"):
        kw = dict(form=form, strategy=strategy, seed=3, max_length=40, top_k=50)
        plain = decoder.generate(begins, [None] * 30, settings(**kw))
        assert sum(_repeated_pairs(t) for t in plain.texts) > 30, plain.texts[:3]
        pairs = decoder.generate(begins, [None] * 30, settings(no_repeat_ngram=2, **kw))
        assert all(_repeated_pairs(t) == 0 for t in pairs.texts), pairs.texts
        singles = decoder.generate(begins, [None] * 30, settings(no_repeat_ngram=1, **kw))
        for text in singles.texts:
            chars = "".join(clauses(text))
            assert len(set(chars)) == len(chars), text
        if form != "free":
            assert all(format_ok(t, form) for t in pairs.texts + singles.texts)


@pytest.mark.parametrize("form", ["wujue", "qilv"])
def test_rhyme_never_repeats_a_rhyme_character(setup, form):
    vocab, prosody, _ = setup
    model = tiny_model(len(vocab), seed=2)
    favourite = vocab.index["楼"]  # 平, 下平十一尤: the model wants it at every position
    with torch.no_grad():
        model.head.bias[favourite] += 8.0
    decoder = Decoder(model, vocab, prosody)
    begins = [BEGINS[i % 7] for i in range(20)]
    s = settings(form=form, tones="strict", rhyme=True, seed=1)
    out = decoder.generate(begins, [None] * 20, s)
    assert sum(out.fallbacks) == 0
    for text in out.texts:
        result = check(text, prosody, form)
        assert result.rhymes and not result.rhyme_repeated and result.conforms, text
    # the checker fails a poem that does repeat one (so the assertion above can fail)
    n_lines, n_chars = FORMS[form]
    lines = [("日" * (n_chars - 1)) + "楼" for _ in range(n_lines)]
    repeated = "".join(line + ("，" if i % 2 == 0 else "。") for i, line in enumerate(lines))
    assert check(repeated, prosody, form).rhyme_repeated


@pytest.mark.parametrize("form", ["wujue", "qilv"])
def test_no_copy_never_completes_a_training_line(setup, form):
    vocab, prosody, _ = setup
    model = tiny_model(len(vocab), seed=4)
    begins = [BEGINS[i % 7] for i in range(14)]
    s = settings(form=form, tones="strict", rhyme=True)
    greedy = Decoder(model, vocab, prosody).generate(begins, [None] * 14, s)
    lines = {c for t in greedy.texts for c in clauses(t)}  # pretend greedy's own lines are the training set
    guarded = Decoder(model, vocab, prosody, training_lines=lines).generate(
        begins, [None] * 14, settings(form=form, tones="strict", rhyme=True, no_copy=True))
    assert sum(guarded.fallbacks) == 0
    for text in guarded.texts:
        assert not set(clauses(text)) & lines, text
        result = check(text, prosody, form)
        assert result.format_ok and result.conforms and result.rhymes, text
    with pytest.raises(ValueError, match="no_copy needs the training lines"):
        Decoder(model, vocab, prosody).generate(["日"], [None], settings(form=form, no_copy=True))


def test_bans_give_way_before_the_masks(setup):
    vocab, _, decoder = setup
    a, b = vocab.index["楼"], vocab.index["流"]
    h = torch.randn(2, decoder.model.config.hidden_dim, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(2, len(vocab), dtype=torch.bool)
    mask[:, [a, b]] = True  # e.g. the rhyme group: only 楼 and 流 are legal
    banned = torch.tensor([[a, b], [a, 0]])  # poem 0: both banned (重韵, no_copy …); poem 1: only 楼
    token, fell_back = decoder._choose(decoder._raw(h), decoder.off_content, settings(), None, mask, decoder.off_content,
                                      banned)
    assert token.tolist()[1] == b and token.tolist()[0] in (a, b)  # the mask holds; the ban gave way
    assert not fell_back.any()
    nothing = torch.zeros_like(mask)
    token, fell_back = decoder._choose(decoder._raw(h), decoder.off_content, settings(), None, nothing,
                                      decoder.off_content, banned)
    assert fell_back.all() and all(bool(decoder.masks.content[t]) for t in token)  # the masks fail: shape only


@pytest.mark.parametrize("form", ["free", "qijue"])
def test_poems_of_several_requests_decoded_together_are_each_their_own(setup, form):
    """keys: one (seed, poem index) per poem, so the studio can merge requests with different seeds
    into one batch and hand each request the poems it would get alone."""
    vocab, _, decoder = setup
    strict = form != "free"
    per_request = [settings(form=form, strategy="sample", top_p=0.9, temperature=1.3, seed=seed,
                            tones="strict" if strict else "loose", rhyme=strict) for seed in (3, 4, 3)]
    # 4, 8, 4 poems: torch's CPU matrix products give a row the same bits in a batch of any multiple
    # of 4 rows, not in one of 1–3 (see studio.poet.ROWS); the keys are what is tested here
    requests = [(["日"] * 4, [None] * 4), (["月"] * 8, [None] * 8), (["山"] * 4, [None] * 4)]
    alone = [decoder.generate(b, a, s).texts for (b, a), s in zip(requests, per_request)]
    begins = [c for b, _ in requests for c in b]
    keys = [(s.seed, i) for (b, _), s in zip(requests, per_request) for i in range(len(b))]
    merged = decoder.generate(begins, [None] * len(begins), per_request[0], keys=keys).texts
    assert merged == alone[0] + alone[1] + alone[2]
    assert alone[0][0][1:] != alone[2][0][1:]  # same seed, other begin character: the poems differ


def test_every_poem_is_scored_with_the_model_s_own_per_character_log_probability(setup):
    vocab, _, decoder = setup
    cases = [settings(strategy="sample", seed=2), settings(),  # free: sampled, greedy
             settings(form="qijue", tones="strict", rhyme=True, strategy="sample", seed=3),  # forced punctuation
             settings(form="wujue", acrostic="日月山水")]  # forced line heads
    for s in cases:
        poems = decoder.generate(["日", "月"], [None, None], s) if s.acrostic is None else \
            decoder.generate([None], [s.acrostic], s)
        assert len(poems.scores) == len(poems.texts)
        assert poems.scores == pytest.approx(decoder.mean_logprobs(poems.texts), abs=1e-5)
        for text, score in zip(poems.texts, poems.scores):  # the reference: the whole prefix at once
            ids = [2] + [vocab.index[c] for c in text]
            with torch.no_grad():
                logits, _ = decoder.model(torch.tensor([ids]))
            logp = logits[0, :-1].log_softmax(-1).gather(1, torch.tensor(ids[1:])[:, None])
            assert score == pytest.approx(float(logp.mean()), abs=1e-5)
