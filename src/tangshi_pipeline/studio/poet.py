"""Requests → poems: the ``generate`` pipeline's rules and decoder, and the page's annotations.

A request is the ``generate`` parameters (``conf/base/parameters_generate.yml``) that it changes;
the rest are the project's own values. It is validated by :class:`~tangshi_pipeline.poet.params.GenerateParams`
and the node's input check, so a rule lives in one place and the server and ``kedro run
--pipelines=generate`` accept and refuse the same values, with the same messages. Poems are written by
the same :class:`~tangshi_pipeline.poet.decoding.Decoder` call the node makes, so the same settings and seed
give the same poems from both.

Each poem comes back annotated: per character its tone in the lexicon, and for a form the template
position it follows (the checker's best template) and whether it fits; the rhyme positions with
their 平水韵 groups; the checker's verdict with the failing positions; each line found verbatim in
the training split with the poems it comes from; the Traditional text (OpenCC s2t); and the model's
mean log-probability per character, by which the candidates are ranked.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import opencc
import pandas as pd
from pydantic import ValidationError

from tangshi_pipeline.pipelines.generate.nodes import GenerationError, _check_inputs, poem_heads
from tangshi_pipeline.poet.artifact import Artifact
from tangshi_pipeline.poet.beam import unit
from tangshi_pipeline.poet.constraints import is_hanzi
from tangshi_pipeline.poet.decoding import Decoder
from tangshi_pipeline.poet.params import GenerateParams
from tangshi_pipeline.poet.prosody import (
    CLAUSE_END,
    FORMS,
    Check,
    Prosody,
    check,
    clauses,
    templates,
)
from tangshi_pipeline.poet.vocab import Vocab

SERVER_FIELDS = ("batch_size", "device")   # set by `kedro serve`, not per request
POEM_FIELDS = ("begin_words", "acrostic", "num_samples")  # which poems; the rest: how they are written
API_FIELDS = tuple(f for f in GenerateParams.model_fields if f not in SERVER_FIELDS)
MAX_POEMS = 16                             # poems per request (num_samples × begin characters)
SOURCES_PER_LINE = 3                       # copied lines: at most this many source poems listed
# Decoder batches are padded to a multiple of ROWS poems: torch's CPU matrix products give a row the
# same bits in any batch of 4, 8, 12, 16 … rows but not in one of 1–3 rows (nor, with two threads,
# 5–7 or 9–11), so a request's poems do not depend on what else is decoded with them.
ROWS = 4
_LINE = re.compile(f"([^{CLAUSE_END}]+)([{CLAUSE_END}]?)")
_FIELD = re.compile(r"^(\w+)")


class RequestError(ValueError):
    """Bad request values: one problem per field, each naming it."""

    def __init__(self, problems: list[dict[str, Any]]):
        super().__init__("; ".join(f"{p['field']}: {p['msg']}" for p in problems))
        self.problems = problems


@dataclass(frozen=True)
class Request:
    """One validated request: its parameters and what the decoder needs."""

    params: GenerateParams
    begins: list[str | None]
    acrostics: list[str | None]

    @property
    def group(self) -> tuple:
        """Requests with equal groups are decoded together: the same decoding settings but the seed
        (each poem keeps its own) — the same theme keywords too (the decoder feeds one prefix per
        batch); a beam's num_samples is a decoding setting (its poems per beam)."""
        poems = {"seed", *POEM_FIELDS} - ({"num_samples"} if self.params.strategy == "beam" else set())
        settings = self.params.model_dump(exclude=poems)
        return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in settings.items())

    @property
    def rows(self) -> int:
        """The decoder rows it takes: one per poem, or beam_size per beam (num_samples poems)."""
        poems, rows = unit(self.params)
        return len(self.begins) // poems * rows


def line_sources(vectors: pd.DataFrame, clean_poems: pd.DataFrame, vocab: Vocab) -> dict[str, list[dict]]:
    """Every line (clause) of the training split → the poems it comes from (title and author, at
    most ``SOURCES_PER_LINE``). Its keys are the node's ``training_clauses``."""
    poems = clean_poems.set_index("id")[["title", "author"]].to_dict("index")
    train = vectors.loc[vectors["split"] == "train", ["id", "ids"]]
    out: dict[str, list[dict]] = {}
    for poem_id, ids in zip(train["id"], train["ids"]):
        meta = poems.get(poem_id, {})
        source = {"title": meta.get("title") or "", "author": meta.get("author") or ""}
        for line in clauses(vocab.decode(ids)):
            found = out.setdefault(line, [])
            if len(found) < SOURCES_PER_LINE and source not in found:
                found.append(source)
    return out


def _problem(field: str, msg: str, kind: str, value: Any = None) -> dict[str, Any]:
    problem = {"loc": ["body", field], "field": field, "msg": msg, "type": kind}
    if value is not None:
        try:  # echoed back as JSON: NaN or infinity (which Python's json reads) as text
            json.dumps(value, allow_nan=False)
            problem["input"] = value
        except (TypeError, ValueError):
            problem["input"] = repr(value)
    return problem


def _problems(exc: ValidationError) -> list[dict[str, Any]]:
    """pydantic's errors, each with the field it is about. A rule between fields has no location,
    but its message starts with the field it is about ("acrostic '春江' has 2 characters but …")."""
    out = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        if err["loc"]:
            field = str(err["loc"][0])
            where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"][1:])
            value = err.get("input") if err["type"] != "missing" else None
            out.append(_problem(field, f"{field}{where}: {msg}", err["type"], value))
        else:
            field = _FIELD.match(msg).group(1)
            out.append(_problem(field if field in API_FIELDS else "body", msg, err["type"]))
    return out


class Poet:
    """A trained model with its vocabulary, prosody and training lines, ready to write poems."""

    def __init__(self, artifact: Artifact, vocab: Vocab, prosody: Prosody, sources: dict[str, list[dict]],
                 defaults: dict[str, Any], version: str, device: str = "cpu"):
        self.artifact, self.vocab, self.prosody, self.sources = artifact, vocab, prosody, sources
        self.version, self.device = version, device
        self.defaults = {k: v for k, v in defaults.items() if k in API_FIELDS}
        # the model fits the vocabulary (else stop now): the node's check, on one vocabulary character
        probe = next(t for t in vocab.tokens if is_hanzi(t))
        _check_inputs(artifact, vocab, self._params({"begin_words": [probe], "acrostic": None}))
        self.decoder = Decoder(artifact.model, vocab, prosody, device, training_lines=sources.keys())
        self._s2t = opencc.OpenCC("s2t")
        self._templates = {(form, t.name): t for form in FORMS for t in templates(form)}

    # ---------------------------------------------------------------------------- validation

    def _params(self, body: dict[str, Any]) -> GenerateParams:
        return GenerateParams.model_validate({**self.defaults, **body, "batch_size": 1024, "device": self.device})

    def validate(self, body: Any) -> Request:
        """A request body (a JSON object of generate parameters) → a :class:`Request`, or
        :class:`RequestError` naming each bad field."""
        if not isinstance(body, dict):
            raise RequestError([_problem("body", "the body must be a JSON object of generate parameters "
                                         f"({', '.join(API_FIELDS)})", "type_error")])
        server = [_problem(k, f"{k} is set by the server (kedro serve), not per request", "extra_forbidden", body[k])
                  for k in SERVER_FIELDS if k in body]
        if server:
            raise RequestError(server)
        try:
            params = self._params(body)
        except ValidationError as exc:
            raise RequestError(_problems(exc)) from None
        begins, acrostics = poem_heads(params)
        if len(begins) > MAX_POEMS:
            raise RequestError([_problem(
                "num_samples", f"num_samples: {params.num_samples} × {len(params.begin_words)} begin character(s) "
                f"= {len(begins)} poems; a request writes at most {MAX_POEMS}", "less_than_equal", params.num_samples)])
        try:
            _check_inputs(self.artifact, self.vocab, params)
        except GenerationError as exc:
            msg = str(exc).removeprefix("generate.")
            field = _FIELD.match(msg).group(1)
            raise RequestError([_problem(field if field in API_FIELDS else "body", msg, "value_error")]) from None
        return Request(params, begins, acrostics)

    # ------------------------------------------------------------------------------ decoding

    def write(self, request: Request) -> list[dict[str, Any]]:
        """One request's poems, annotated, best first (a batch of one)."""
        return self.write_together(request.group, [request])[0]

    def write_together(self, group: tuple, requests: list[Request]) -> list[list[dict[str, Any]]]:
        """Decode several requests of one :attr:`Request.group` in one batch, with the first one's
        settings; each request's poems, best first. Every poem is drawn from its own request's
        (seed, poem index), so it is the poem that request gets alone."""
        begins, acrostics, keys = [], [], []
        for r in requests:
            begins += r.begins
            acrostics += r.acrostics
            keys += [(r.params.seed, i) for i in range(len(r.begins))]
        p = requests[0].params
        per, rows = unit(p)  # poems and decoder rows per beam (1, 1 without beam search)
        padding = next(k for k in range(ROWS) if (len(begins) // per + k) * rows % ROWS == 0) * per
        poems = self.decoder.generate(begins + begins[:per] * (padding // per),
                                      acrostics + acrostics[:per] * (padding // per), p,
                                      batch_size=len(begins) + padding, keys=keys + keys[:1] * padding)
        out, start = [], 0
        for r in requests:
            part = slice(start, start + len(r.begins))
            start = part.stop
            written = [self.annotate(i, text, r.params.form, score, template, fallbacks)
                       for i, (text, score, template, fallbacks)
                       in enumerate(zip(poems.texts[part], poems.scores[part], poems.templates[part],
                                        poems.fallbacks[part]))]
            written.sort(key=lambda p: -p["score"])
            for rank, poem in enumerate(written, 1):
                poem["rank"] = rank
            out.append(written)
        return out

    # ---------------------------------------------------------------------------- annotation

    def annotate(self, index: int, text: str, form: str, score: float, held_to: str | None,
                 fallbacks: int) -> dict[str, Any]:
        """A poem as the page shows it (see the module docstring)."""
        verdict = check(text, self.prosody, form if form in FORMS else None)
        template = self._templates.get((verdict.form, verdict.template))
        rhyme_ok = self._rhyme_positions(text, verdict, template)
        lines, failing = [], []
        for i, (line, punct) in enumerate(_LINE.findall(text)):
            chars = []
            for j, ch in enumerate(line):
                fits = verdict.fits[i][j] if verdict.fits else None
                rhyme = None
                if (i, j) in rhyme_ok:
                    rhyme = {"groups": self._groups(ch), "ok": rhyme_ok[(i, j)]}
                if fits is False or (rhyme and not rhyme["ok"]):
                    failing.append([i, j])
                chars.append({"char": ch, "tone": self.prosody.tone(ch),
                              "required": template.lines[i][j] if template else None,
                              "fits": fits, "rhyme": rhyme})
            traditional = self._traditional(line)
            for c, t in zip(chars, traditional):
                c["traditional"] = t
            lines.append({"text": line, "traditional": traditional, "punctuation": punct,
                          "copied_from": self.sources.get(line, []), "chars": chars})
        return {
            "index": index, "rank": 0, "text": text, "traditional": self._traditional(text),
            "score": round(score, 4), "held_to": held_to, "fallbacks": fallbacks, "lines": lines,
            "verdict": {"form": verdict.form, "format": verdict.format_ok, "template": verdict.template,
                        "tones": verdict.conforms, "tone_matches": verdict.tone_matches,
                        "tone_positions": verdict.tone_positions, "rhyme": verdict.rhymes,
                        "rhyme_group": verdict.rhyme_group, "rhyme_repeated": verdict.rhyme_repeated,
                        "failing": failing},
        }

    def _rhyme_positions(self, text: str, verdict: Check, template) -> dict[tuple[int, int], bool]:
        """(line, position) of each rhyming line end → whether it rhymes (the poem's group, not a
        character used before)."""
        if template is None:
            return {}
        out, seen = {}, set()
        for i, line in enumerate(clauses(text)):
            if template.rhymes[i]:
                ch = line[-1]
                out[(i, len(line) - 1)] = (verdict.rhyme_group is not None and ch not in seen
                                           and verdict.rhyme_group in self._groups(ch))
                seen.add(ch)
        return out

    def _groups(self, ch: str) -> list[str]:
        names = self.prosody.group_names
        return [names[g] for g in sorted(self.prosody.char_groups.get(ch, ()))]

    def _traditional(self, text: str) -> str:
        converted = self._s2t.convert(text)
        if len(converted) == len(text):
            return converted
        return "".join(c if len(c := self._s2t.convert(ch)) == 1 else ch for ch in text)
