"""Typed parameters, one model per pipeline, validated before any node runs.

``SCHEMAS`` maps each top-level key of ``conf/*/parameters_<pipeline>.yml`` to its model. The
project hook validates every section present in the run's parameters when the pipeline starts,
and nodes call :func:`parse` to get the typed object. A bad value fails with one message naming
the parameter, the value and the rule it broke.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Char = Annotated[str, Field(min_length=1, max_length=1)]
M = TypeVar("M", bound=BaseModel)


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitParams(Params):
    train: float = Field(0.94, gt=0, lt=1)
    val: float = Field(0.03, ge=0, lt=1)
    test: float = Field(0.03, ge=0, lt=1)

    @model_validator(mode="after")
    def _sums_to_one(self):
        if abs(self.train + self.val + self.test - 1.0) > 1e-9:
            raise ValueError(f"train + val + test must be 1, got {self.train + self.val + self.test:g}")
        return self


class DataProcessingParams(Params):
    skip_bad_partitions: bool = False
    opencc_config: str = "t2s"
    drop_if_contains: list[Annotated[str, Field(min_length=1)]] = ["_", "(", "（", "《", "["]
    min_length: int = Field(5, ge=1)
    max_length: int = Field(80, ge=1)
    dedupe: bool = True
    start_token: Char = "G"
    end_token: Char = "E"
    min_count: int = Field(1, ge=1)
    split: SplitParams = SplitParams()
    split_salt: str = "tangshi"

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


def parse(model: type[M], section: str, raw: Any) -> M:
    """Validate ``raw`` (the ``params:<section>`` dict) into ``model``, or raise ParameterError."""
    if isinstance(raw, model):
        return raw
    try:
        return model.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join([section, *(str(p) for p in err["loc"])])
            value = f" = {err['input']!r}" if "input" in err and err["type"] != "missing" else ""
            problems.append(f"{where}{value}: {err['msg']}")
        raise ParameterError(
            "invalid parameter " + "; ".join(problems)
            + f" (set it in conf/base/parameters_{section}.yml or with --params)"
        ) from None


def validate_all(params: dict[str, Any]) -> None:
    """Validate every known section present in a run's parameters."""
    for section, model in SCHEMAS.items():
        if section in params:
            parse(model, section, params[section])


# ------------------------------------------------------------------------------------ generate

FORM_LINES = {"wujue": 4, "qijue": 4, "wulv": 8, "qilv": 8}  # see prosody.FORMS


class GenerateParams(Params):
    begin_words: list[Char] = Field(default_factory=lambda: list("日红山夜湖君月"), min_length=1)
    acrostic: Annotated[str, Field(min_length=1, max_length=16)] | None = None
    form: Literal["free", "wujue", "qijue", "wulv", "qilv"] = "free"
    strategy: Literal["greedy", "sample"] = "greedy"
    temperature: float = Field(0.8, gt=0, le=10)
    top_k: int = Field(0, ge=0)
    top_p: float = Field(0.9, gt=0, le=1)
    num_samples: int = Field(1, ge=1, le=100_000)
    max_length: int = Field(30, ge=1, le=200)
    tones: Literal["loose", "strict"] = "loose"
    rhyme: bool = False
    seed: int = Field(42, ge=0)
    batch_size: int = Field(1024, ge=1)
    device: str = "cpu"

    @model_validator(mode="after")
    def _consistent(self):
        if self.acrostic is not None and self.form in FORM_LINES and len(self.acrostic) != FORM_LINES[self.form]:
            raise ValueError(
                f"acrostic {self.acrostic!r} has {len(self.acrostic)} characters but form {self.form} has "
                f"{FORM_LINES[self.form]} lines: give {FORM_LINES[self.form]} characters, or use form free "
                f"(one line per character)"
            )
        if self.form == "free" and (self.tones == "strict" or self.rhyme):
            raise ValueError(
                "tones: strict and rhyme: true need a regular form (wujue, qijue, wulv or qilv); "
                "form free has no tone template or rhyme scheme"
            )
        return self


SCHEMAS["generate"] = GenerateParams
