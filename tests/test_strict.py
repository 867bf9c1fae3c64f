"""The strict-config toolkit on models of its own (the run config, sweep and spec tests use it
through their files)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Annotated, Literal, Union

import pytest
from pydantic import Field, model_validator

from sslray.strict import (
    ConfigError,
    FieldError,
    StrictModel,
    apply_overrides,
    read_yaml,
    validate,
)


class Cat(StrictModel):
    kind: Literal["cat"] = "cat"
    lives: int = 9


class Dog(StrictModel):
    kind: Literal["dog"] = "dog"
    bark: float = 1.0


class Leg(StrictModel):
    length: float = Field(default=1.0, gt=0)


class Owner(StrictModel):
    name: str
    pet: Annotated[Union[Cat, Dog], Field(discriminator="kind")] = Cat()  # noqa: UP007
    legs: tuple[Leg, ...] = ()
    homes: dict[str, Leg] = {}
    spare: Leg | None = None

    @model_validator(mode="after")
    def _checks(self) -> Owner:
        if self.name == "nobody":
            raise FieldError("pet.kind", "nobody owns a pet")
        return self


def problems(raw: dict) -> list[str]:
    with pytest.raises(ConfigError) as err:
        validate(Owner, raw, "owner.yaml", registries={"pet.kind": ("cat", "dog")})
    assert "owner.yaml" in str(err.value)
    return err.value.problems


def test_unknown_keys_get_a_hint_at_every_depth() -> None:
    assert problems({"nme": "a"}) == ["name: required", "nme: unknown key (did you mean 'name'?)"]
    assert problems({"name": "a", "pet": {"kind": "dog", "barks": 2}}) == [
        "pet.barks: unknown key (did you mean 'bark'?)"]  # the tag is not in the path
    assert problems({"name": "a", "pet": {"livs": 2}}) == ["pet.kind: required"]
    assert problems({"name": "a", "legs": [{}, {"lenght": 2}]}) == [
        "legs[1].lenght: unknown key (did you mean 'length'?)"]
    assert problems({"name": "a", "homes": {"x": {"zzz": 1}}, "spare": {"zzz": 1}}) == [
        "homes.x.zzz: unknown key (known keys: length)",
        "spare.zzz: unknown key (known keys: length)"]


def test_values_tags_and_model_checks_name_their_key() -> None:
    assert problems({"name": "a", "legs": [{"length": -1}]}) == [
        "legs[0].length: Input should be greater than 0 (got -1)"]
    assert problems({"name": "a", "pet": {"kind": "cow"}}) == [
        "pet.kind: unknown pet 'cow' (registered: cat, dog)"]
    assert problems({"name": "nobody"}) == ["pet.kind: nobody owns a pet"]
    with pytest.raises(ConfigError, match=r"\(top level\): expected a mapping, got list"):
        validate(Owner, [1], "x")
    err = pickle.loads(pickle.dumps(ConfigError("x.yaml", ["a: b"])))
    assert (err.source, err.problems) == ("x.yaml", ["a: b"])
    assert str(err) == "invalid config x.yaml:\n  - a: b"


def test_read_yaml_errors_and_floats(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text("lr: 1e-3\nn: 3\n")
    assert read_yaml(path) == {"lr": 0.001, "n": 3}
    path.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="malformed YAML at line 2, column 1"):
        read_yaml(path)
    path.write_text("- 1\n")
    with pytest.raises(ConfigError, match=r"\(top level\): expected a mapping, got list"):
        read_yaml(path)
    with pytest.raises(ConfigError, match="cannot read: No such file"):
        read_yaml(tmp_path / "missing.yaml")
    path.write_text("")
    assert read_yaml(path) == {}


def test_overrides() -> None:
    assert apply_overrides({"a": {"b": 1}}, ["a.b=2e-2", "a.c=[1, 2]"]) == {
        "a": {"b": 0.02, "c": [1, 2]}}
