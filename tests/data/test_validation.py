"""data/validation.describe: the one wording of what a pydantic model refused."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from data.validation import describe


class Inner(BaseModel):
    rank: int


class Outer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inner: Inner
    name: str


def refusal(value: object) -> ValidationError:
    with pytest.raises(ValidationError) as raised:
        Outer.model_validate(value)
    return raised.value


def test_paths_messages_unknown_keys_and_limits():
    exc = refusal({"inner": {"rank": "x"}, "name": 3, "typo": 1})
    assert describe(exc) == ("inner.rank: Input should be a valid integer, unable to parse string as an integer; "
                             "name: Input should be a valid string; typo: not a known setting")
    assert describe(exc, prefix="retrain_train.", limit=1, show_input=True) == (
        "retrain_train.inner.rank: Input should be a valid integer, unable to parse string as an integer (got 'x')")
    assert describe(refusal([1]), root="manifest").startswith("manifest: Input should be a valid dictionary")
