"""Config value checks under fuzzing: any `--set key=value` is accepted in range or refused naming the key.

The keys and their bounds are read from the pydantic schema itself (numeric fields with ge/gt/le/lt,
Literal choices), so a new bounded key is fuzzed without editing this file. Values are YAML texts as a
user types them: numbers on and around the bounds, NaN and infinities, wrong types, free text.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import dataclass

import annotated_types
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unetlab.config import Config, load_config
from unetlab.errors import ConfigError


@dataclass(frozen=True)
class Key:
    path: str
    lower: tuple[float, bool] | None = None  # (bound, inclusive)
    upper: tuple[float, bool] | None = None
    choices: tuple[str, ...] = ()
    optional: bool = False  # Optional[...]: null switches it off

    def allows(self, value: object) -> bool:
        """Whether an accepted value honours the schema's bounds (what the loader must guarantee)."""
        if value is None:
            return self.optional
        if self.choices:
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if self.lower and (value < self.lower[0] or (value == self.lower[0] and not self.lower[1])):
            return False
        return not (self.upper and (value > self.upper[0] or (value == self.upper[0] and not self.upper[1])))


def _base(annotation: object) -> object:
    """int / float / Literal[...] under Optional[...]."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return rest[0] if len(rest) == 1 else None
    return annotation


def schema_keys() -> list[Key]:
    keys = []
    for section, field in Config.model_fields.items():
        for name, info in getattr(field.annotation, "model_fields", {}).items():  # sections, not top-level keys
            base = _base(info.annotation)
            optional = type(None) in typing.get_args(info.annotation)
            if typing.get_origin(base) is typing.Literal:
                keys.append(Key(f"{section}.{name}", choices=tuple(typing.get_args(base)), optional=optional))
            elif base in (int, float):
                lower = upper = None
                for meta in info.metadata:
                    if isinstance(meta, annotated_types.Ge):
                        lower = (meta.ge, True)
                    elif isinstance(meta, annotated_types.Gt):
                        lower = (meta.gt, False)
                    elif isinstance(meta, annotated_types.Le):
                        upper = (meta.le, True)
                    elif isinstance(meta, annotated_types.Lt):
                        upper = (meta.lt, False)
                if lower or upper:
                    keys.append(Key(f"{section}.{name}", lower, upper, optional=optional))
    return keys


KEYS = schema_keys()
TYPOS = ["[1, 2]", "{a: 1}", "null", "~", "true", "no", "''", "abc", "1e400", "-1e400", ".nan", ".inf", "-.inf",
         "0x10", "1_000", "1.5.2", "3 epochs", "[]", "2024-01-01", "!!python/object:os.system ls"]


def _near(bound: tuple[float, bool] | None) -> list[str]:
    if bound is None:
        return []
    b = bound[0]
    return [repr(v) for v in (b, b - 1, b + 1, b - 1e-9, b + 1e-9, b * 10, -b)]


@st.composite
def key_and_value(draw) -> tuple[Key, str]:
    key = draw(st.sampled_from(KEYS))
    texts = [st.sampled_from(TYPOS), st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=10)]
    if key.choices:
        near_misses = [*(c.upper() for c in key.choices), *(c + " " for c in key.choices)]
        texts.append(st.sampled_from([*key.choices, *near_misses]))
    else:
        texts += [st.integers(-10**6, 10**6).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr)]
        near = _near(key.lower) + _near(key.upper)
        texts.append(st.sampled_from(near))
    return key, draw(st.one_of(texts))


def test_the_schema_offers_bounded_and_choice_keys():
    paths = {key.path for key in KEYS}
    assert {"train.epochs", "optim.lr", "data.val_fraction", "optim.name", "train.precision"} <= paths
    assert len(KEYS) >= 30


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key_and_value())
def test_a_fuzzed_value_is_accepted_in_range_or_refused_naming_the_key(case):
    key, text = case
    try:
        config = load_config(None, [f"{key.path}={text}"])
    except ConfigError as exc:
        assert key.path in str(exc), (text, str(exc))
        assert "\n" not in str(exc).strip(), str(exc)
        return
    section, name = key.path.split(".")
    value = getattr(getattr(config, section), name)
    assert key.allows(value), f"{key.path}={text!r} accepted as {value!r}, outside the schema's bounds"


@pytest.mark.parametrize("text", ["abc", "[1, 2]", "{a: 1}", ".nan"])
def test_every_bounded_key_refuses_a_value_of_the_wrong_type(text):
    for key in KEYS:
        if key.choices:
            continue
        with pytest.raises(ConfigError, match=key.path.replace(".", r"\.")):
            load_config(None, [f"{key.path}={text}"])


# The model's options are its factory's arguments (checked by building it on the meta device), not
# schema fields: no bounds to read, so only the contract is checked, accepted or refused naming the key.
MODEL_OPTIONS = ["model.base_width", "model.depth", "model.dropout", "model.classes", "model.in_channels"]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(MODEL_OPTIONS),
       st.one_of(st.sampled_from(TYPOS), st.integers(-5, 5000).map(str), st.floats().map(repr)))
def test_a_fuzzed_model_option_is_accepted_or_refused_naming_it(key, text):
    try:
        load_config(None, [f"{key}={text}"])
    except ConfigError as exc:
        assert key in str(exc), (text, str(exc))


@pytest.mark.parametrize("override, needle", [
    ("model.base_width=31635422", "model.base_width=31635422"),  # torch's size overflow on the meta device
    ("optim.lr=.inf", "optim.lr"),  # gt=0 alone lets infinity through
    ("loss.pos_weight=.nan", "loss.pos_weight"),
])
def test_what_the_fuzzing_found_is_refused_naming_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(None, [override])
