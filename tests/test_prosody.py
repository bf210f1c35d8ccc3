"""Tone lexicon, rhyme table, templates and the checker, on famous poems typed in."""

from __future__ import annotations

import opencc
import pytest

from tangshi_pipeline.poet.prosody import (
    EITHER,
    FORMS,
    PING,
    ZE,
    Prosody,
    build_rhyme_table,
    build_tone_lexicon,
    check,
    format_ok,
    sentences,
    shape_of,
    templates,
)
from tests.fixtures.poems import REAL
from tests.helpers_models import pingshui_table

T2S = opencc.OpenCC("t2s")


@pytest.fixture(scope="module")
def rhyme_table() -> dict:
    loaded = pingshui_table()
    return build_rhyme_table(loaded["data"], T2S.convert, loaded["source"])


def _famous(title: str) -> tuple[str, str]:
    poem = next(p for p in REAL if T2S.convert(p["title"]) == title)
    return T2S.convert("".join(poem["paragraphs"])), "".join(poem["strains"])


def _own_tones(text: str, tones: str, rhyme_table: dict) -> Prosody:
    """Judge a poem by its own aligned tone marks (as the strains files give them)."""
    return Prosody.from_json({"tones": dict(zip(text, tones))}, rhyme_table)


def test_tone_lexicon_counts_marks_and_merges_by_threshold():
    texts = ["干干干干干干干干干干", "发发发", "中中中", "山水", "不对齐"]
    tones = ["平平平平平平平平平仄", "仄仄仄", "平仄○", "平？", None]
    lexicon = build_tone_lexicon(texts, tones, threshold=0.9)
    assert lexicon["tones"]["干"] == PING            # 9 of 10 平: dominant
    assert lexicon["counts"]["干"] == [9, 1, 0]
    assert lexicon["tones"]["发"] == ZE
    assert lexicon["tones"]["中"] == EITHER          # both readings, none dominant
    assert lexicon["tones"]["山"] == PING and "水" not in lexicon["tones"]  # ？ is no mark
    assert "不" not in lexicon["tones"]              # tones missing: nothing counted
    strict = build_tone_lexicon(texts, tones, threshold=0.95)
    assert strict["tones"]["干"] == EITHER


def test_rhyme_table_is_simplified_and_merges_traditional_variants():
    table = {"ping": {"上平聲部": {"上平聲一東": ["東風"], "上平聲四支": ["支"]},
                      "下平聲部": {"下平聲一先": ["錢"]}}, "ze": {}}
    out = build_rhyme_table(table, T2S.convert)
    assert out["groups"] == {"上平一东": "东東风風", "上平四支": "支", "下平一先": "钱錢"}
    prosody = Prosody.from_json({"tones": {}}, out)
    assert prosody.char_groups["风"] == prosody.char_groups["風"] == frozenset({0})


def test_pingshui_table_has_the_thirty_level_groups(rhyme_table):
    groups = rhyme_table["groups"]
    assert len(groups) == 30 and list(groups)[0] == "上平一东" and list(groups)[-1] == "下平十五咸"
    assert "楼" in groups["下平十一尤"] and "流" in groups["下平十一尤"]
    assert "光" in groups["下平七阳"] and "乡" in groups["下平七阳"]


def test_templates_follow_nian_dui_and_avoid_gu_ping_and_san_ping_wei():
    wujue = {t.name: t for t in templates("wujue")}
    assert set(wujue) == {"仄起不入韵", "仄起入韵", "平起不入韵", "平起入韵"}
    assert wujue["仄起不入韵"].lines == ("*仄*平仄", "平平*仄平", "*平*仄仄", "*仄仄平平")
    assert wujue["仄起入韵"].rhymes == (True, True, False, True)
    qilv = {t.name: t for t in templates("qilv")}
    assert qilv["平起入韵"].lines[0] == "*平*仄仄平平"       # 平平仄仄仄平平, no 三平尾
    assert qilv["平起入韵"].lines[1] == "*仄平平*仄平"       # 仄仄平平仄仄平, no 孤平
    for form, (n_lines, n_chars) in FORMS.items():
        for t in templates(form):
            assert len(t.lines) == n_lines and all(len(line) == n_chars for line in t.lines)
            # 对: the two lines of a couplet differ at the 2nd character; 粘: across couplets equal
            seconds = [line[1] for line in t.lines]
            assert all(seconds[i] != seconds[i + 1] for i in range(0, n_lines, 2))
            assert all(seconds[i] == seconds[i + 1] for i in range(1, n_lines - 1, 2))
            assert t.rhymes[1::2] == (True,) * (n_lines // 2)


def test_shape_and_format():
    assert shape_of("白日依山尽，黄河入海流。欲穷千里目，更上一层楼。") == "wujue"
    assert format_ok("白日依山尽，黄河入海流。欲穷千里目，更上一层楼。", "wujue")
    assert shape_of("白日依山尽，黄河入海流？欲穷千里目，更上一层楼。") == "wujue"
    assert not format_ok("白日依山尽，黄河入海流？欲穷千里目，更上一层楼。", "wujue")
    assert shape_of("白日依山尽，黄河入海流。") == "free"
    assert shape_of("白日依山尽黄河入海流欲穷千里目更上一层楼") == "free"
    assert sentences("白日依山尽，黄河入海流。欲穷千里目，更上一层楼。") == [
        "白日依山尽，黄河入海流。", "欲穷千里目，更上一层楼。"]


@pytest.mark.parametrize("title, form, template, conforms, rhymes, group", [
    ("登鹳雀楼", "wujue", "仄起不入韵", True, True, "下平十一尤"),   # 流 楼
    ("相思", "wujue", "仄起不入韵", True, True, "上平四支"),        # 枝 思
    ("静夜思", "wujue", None, False, True, "下平七阳"),            # 古绝: rhymes 光 霜 乡, tones free
    ("春晓", "wujue", None, False, False, None),                  # 仄韵 (晓 鸟 少): not regulated
    ("江雪", "wujue", None, False, False, None),                  # 仄韵 (绝 灭 雪)
    ("黄鹤楼", "qilv", None, False, True, "下平十一尤"),           # 古风 tones, rhymes 楼 悠 洲 愁
])
def test_checker_on_famous_poems(rhyme_table, title, form, template, conforms, rhymes, group):
    text, tones = _famous(title)
    result = check(text, _own_tones(text, tones, rhyme_table))
    assert result.form == form and result.format_ok
    assert result.conforms is conforms
    if template:
        assert result.template == template
        assert result.tone_matches == result.tone_positions
    else:
        assert result.tone_matches < result.tone_positions
    assert result.rhymes is rhymes
    if group:
        assert result.rhyme_group == group


def test_checker_fails_a_repeated_rhyme_character(rhyme_table):
    text, tones = _famous("登鹳雀楼")
    prosody = _own_tones(text, tones, rhyme_table)
    twice = text.replace("入海流", "入海楼")  # 楼 ends both rhyming lines: 重韵
    result = check(twice, _own_tones(twice, tones, rhyme_table))
    assert result.rhyme_group == "下平十一尤" and result.rhyme_repeated and not result.rhymes
    assert not check(text, prosody).rhyme_repeated


def test_checker_flags_a_broken_position(rhyme_table):
    text, tones = _famous("登鹳雀楼")
    prosody = _own_tones(text, tones, rhyme_table)
    broken = text.replace("更上", "更下")  # 上 仄 → 下 with no tone: the 2nd position of line 4 breaks
    result = check(broken, prosody)
    assert not result.conforms and result.tone_matches == result.tone_positions - 1
    assert result.fits[3][1] is False
    assert check("白日依山尽", prosody).form == "free"

