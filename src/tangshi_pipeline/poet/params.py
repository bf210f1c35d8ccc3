"""Typed parameters, one model per pipeline, validated before any node runs.

The values (defaults included) live in ``conf/base/parameters_<pipeline>.yml`` and nowhere else:
these models only say what a valid value is.

``SCHEMAS`` maps each top-level key of ``conf/*/parameters_<pipeline>.yml`` to its model. The
project hook validates every section present in the run's parameters when the pipeline starts,
and nodes call :func:`parse` to get the typed object. A bad value fails with one message naming
the parameter, the value and the rule it broke.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from tangshi_pipeline.poet.prosody import FORMS

Char = Annotated[str, Field(min_length=1, max_length=1)]
M = TypeVar("M", bound=BaseModel)

# Upper limits: far above real use (the classic model is 100 / 128 × 2, batches of 32 on a CPU and
# 1,024 on a GPU), low enough that a typo fails here, naming itself, instead of in the allocator.
# At every limit at once the LSTM has about 1.1 billion weights (4.5 GB; about 18 GB to train with
# AdamW, before activations): it fits a big GPU. A smaller device can run out of memory below them.
# Seeds: 0 … 2³² − 1, as NumPy's; the batch order's torch generator is seeded with
# seed × 1,000,003 + epoch, which must stay below 2⁶⁴.
MAX_SEED = 2**32 - 1       # training.seed, generate.seed
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
MAX_WIDTH = 4096           # training.embedding_dim, training.hidden_dim
MAX_LAYERS = 8             # training.num_layers
MAX_TRAIN_BATCH = 8192     # training.batch_size
MAX_DECODE_BATCH = 65536   # generate.batch_size
MAX_POEMS = 100_000        # generate: num_samples × begin words (or × 1 for an acrostic) in one run
MAX_BEAM = 64              # generate.beam_size: hypotheses kept per poem


def _device(name: str) -> str:
    """generate.device: cpu, cuda, cuda:N or mps (training.device is one of auto, cpu, cuda, mps)."""
    if not re.fullmatch(r"cpu|cuda(:[0-9]+)?|mps", name):
        raise ValueError("must be cpu, cuda, cuda:N (N: a GPU index) or mps")
    return name


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitParams(Params):
    train: float = Field(gt=0, le=1)
    val: float = Field(ge=0, lt=1)
    test: float = Field(ge=0, lt=1)

    @model_validator(mode="after")
    def _sums_to_one(self):
        if abs(self.train + self.val + self.test - 1.0) > 1e-9:
            raise ValueError(f"train + val + test must be 1, got {self.train + self.val + self.test:g}")
        return self


class KeywordParams(Params):
    """data_processing.keywords: how extract_keywords picks each poem's theme keywords."""

    per_poem: int = Field(ge=1, le=3)
    title_weight: float = Field(ge=0)
    min_df: int = Field(ge=1)
    max_df: float = Field(gt=0, le=1)
    word_association: float = Field(ge=0, le=1)


class DataProcessingParams(Params):
    skip_bad_partitions: bool
    opencc_config: str
    drop_if_contains: list[Annotated[str, Field(min_length=1)]]
    min_length: int = Field(ge=1)
    max_length: int = Field(ge=1)
    dedupe: bool
    start_token: Char
    end_token: Char
    min_count: int = Field(ge=1)
    split: SplitParams
    split_salt: str
    keywords: KeywordParams

    @model_validator(mode="after")
    def _consistent(self):
        if self.min_length > self.max_length:
            raise ValueError(f"min_length ({self.min_length}) is greater than max_length ({self.max_length})")
        if self.start_token == self.end_token:
            raise ValueError(f"start_token and end_token are both {self.start_token!r}")
        return self


SCHEMAS: dict[str, type[Params]] = {"data_processing": DataProcessingParams}


class ParameterError(ValueError):
    """A parameter failed validation; the message names it."""


def _range(model: type[BaseModel], loc: tuple) -> tuple[Any, Any] | None:
    """(low, high) of a top-level field bounded on both sides (ge and le), else None."""
    field = model.model_fields.get(loc[0]) if len(loc) == 1 else None
    bounds = {name: getattr(rule, name) for rule in (field.metadata if field is not None else ())
              for name in ("ge", "le") if getattr(rule, name, None) is not None}
    return (bounds["ge"], bounds["le"]) if len(bounds) == 2 else None


def parse(model: type[M], section: str, raw: Any) -> M:
    """Validate ``raw`` (the ``params:<section>`` dict) into ``model``, or raise ParameterError."""
    try:
        return model.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join([section, *(str(p) for p in err["loc"])])
            shown = "input" in err and err["type"] != "missing" and err["loc"]  # not a whole section
            value = f" = {err['input']!r}" if shown else ""
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] in ("greater_than_equal", "less_than_equal") and (bounds := _range(model, err["loc"])):
                message = f"must be between {bounds[0]} and {bounds[1]}"
            problems.append(f"{where}{value}: {message}")
        raise ParameterError(
            "invalid parameter " + "; ".join(problems)
            + f" (set it in conf/base/parameters_{section}.yml or with --params)"
        ) from None


def validate_all(params: dict[str, Any]) -> None:
    """Validate every known section present in a run's parameters."""
    for section, model in SCHEMAS.items():
        if section in params:
            parse(model, section, params[section])


class TrainingParams(Params):
    cell: Literal["rnn", "lstm", "gru"]
    embedding_dim: int = Field(ge=1, le=MAX_WIDTH)
    hidden_dim: int = Field(ge=1, le=MAX_WIDTH)
    num_layers: int = Field(ge=1, le=MAX_LAYERS)
    dropout: float = Field(ge=0, lt=1)
    head: Literal["full", "adaptive"]
    adaptive_cutoffs: list[Annotated[int, Field(ge=5)]]
    optimizer: Literal["adamw", "rmsprop"]
    learning_rate: float = Field(gt=0)
    lr_schedule: Literal["cosine", "constant"]
    warmup_steps: int = Field(ge=0)
    min_lr_ratio: float = Field(ge=0, le=1)
    weight_decay: float = Field(ge=0)
    grad_clip: float | None = Field(gt=0)
    batch_size: int = Field(ge=1, le=MAX_TRAIN_BATCH)
    epochs: int = Field(ge=1)
    max_minutes: float | None = Field(gt=0)
    checkpoint_every: int = Field(ge=1)
    checkpoint_minutes: float | None = Field(gt=0)
    device: Literal["auto", "cpu", "cuda", "mps"]
    precision: Literal["fp32", "bf16"]
    fused_head: Literal["auto"] | bool
    threads: int = Field(ge=0)
    seed: Seed
    resume: bool
    world_size: int = Field(ge=1)
    keyword_dropout: float = Field(ge=0, le=1)


SCHEMAS["training"] = TrainingParams


# ------------------------------------------------------------------------------------ generate

# the verse forms are those of the prosody tables (FORMS), and free verse
Form = Literal[("free", *FORMS)]
_REGULAR = ", ".join(list(FORMS)[:-1]) + f" or {list(FORMS)[-1]}"  # wujue, qijue, wulv or qilv


class GenerateParams(Params):
    """The ``generate`` parameters: which poems to write (begin_words, acrostic, num_samples), how
    (the decoding settings, read by :class:`~tangshi_pipeline.poet.decoding.Decoder`) and where
    (batch_size, device)."""

    begin_words: list[Char] = Field(min_length=1)
    acrostic: Annotated[str, Field(min_length=1, max_length=16)] | None
    form: Form
    strategy: Literal["greedy", "sample", "beam"]
    beam_size: int = Field(ge=1, le=MAX_BEAM)
    temperature: float = Field(gt=0, le=10)
    top_k: int = Field(ge=0)
    top_p: float = Field(gt=0, le=1)
    num_samples: int = Field(ge=1, le=MAX_POEMS)
    max_length: int = Field(ge=1, le=200)
    tones: Literal["loose", "strict"]
    rhyme: bool
    no_repeat_ngram: int = Field(ge=0, le=16)
    no_copy: bool
    seed: Seed
    batch_size: int = Field(ge=1, le=MAX_DECODE_BATCH)
    device: Annotated[str, AfterValidator(_device)]
    keywords: list[Annotated[str, Field(min_length=1, max_length=2)]] = Field(max_length=3)
    keyword_boost: float = Field(ge=0.0, le=10.0)

    @model_validator(mode="after")
    def _consistent(self):
        lines = FORMS[self.form][0] if self.form in FORMS else None
        if self.acrostic is not None and lines is not None and len(self.acrostic) != lines:
            raise ValueError(
                f"acrostic {self.acrostic!r} has {len(self.acrostic)} characters but form {self.form} has "
                f"{lines} lines: give {lines} characters, or use form free "
                f"(one line per character)"
            )
        if self.form == "free" and (self.tones == "strict" or self.rhyme):
            raise ValueError(
                f"tones: strict and rhyme: true need a regular form ({_REGULAR}); "
                "form free has no tone template or rhyme scheme"
            )
        if self.form == "free" and self.no_copy:
            raise ValueError(f"no_copy: true needs a regular form ({_REGULAR}): "
                             "form free has no fixed line length to check at")
        if self.strategy == "beam" and self.num_samples > self.beam_size:
            raise ValueError(
                f"num_samples = {self.num_samples} is more than beam_size = {self.beam_size}: a beam returns "
                f"at most beam_size distinct poems per begin character; raise generate.beam_size or lower "
                f"generate.num_samples"
            )
        starts = 1 if self.acrostic else len(self.begin_words)
        if self.num_samples * starts > MAX_POEMS:
            raise ValueError(
                f"generate.num_samples = {self.num_samples} with {starts} begin words makes "
                f"{self.num_samples * starts:,} poems, over the {MAX_POEMS:,} one run may write: "
                f"allowed 1..{MAX_POEMS // starts} with {starts} begin words; lower generate.num_samples "
                f"or give fewer generate.begin_words"
            )
        return self


SCHEMAS["generate"] = GenerateParams
