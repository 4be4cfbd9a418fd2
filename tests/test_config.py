"""metakd_cli.core.config: recipes, overrides and their precedence, type checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REPO_ROOT
from metakd_cli.core.config import (
    DataConfig,
    DistillConfig,
    FitConfig,
    Recipe,
    apply_overrides,
    apply_sets,
    apply_values,
    choice,
    load_recipe,
)
from metakd_cli.core.errors import UserError


def recipe_file(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def recipe_error(path: Path) -> str:
    with pytest.raises(UserError) as info:
        load_recipe(path)
    return str(info.value)


# --------------------------------------------------------------------------- recipes


def test_no_recipe_gives_the_defaults():
    recipe = load_recipe(None)
    assert recipe == Recipe()
    assert recipe.fit == FitConfig() and recipe.distill == DistillConfig() and recipe.data == DataConfig()


def test_valid_recipe(tmp_path):
    path = recipe_file(
        tmp_path,
        """\
# quick: a CPU smoke run
data:
  path: examples/reviews
  limit_per_domain: 40
fit:
  epochs: 1
  lr: 2e-5          # YAML reads this as a string; it is still a float
  warmup: 0         # an int where a float is expected
  trust_remote_code: yes
distill:
  student: tiny
  max_length: null  # int | None
  domain: ~
""",
    )
    recipe = load_recipe(path)
    assert recipe.data.path == "examples/reviews" and recipe.data.limit_per_domain == 40
    assert recipe.fit.epochs == 1
    assert recipe.fit.lr == 2e-5 and isinstance(recipe.fit.lr, float)
    assert recipe.fit.warmup == 0.0 and isinstance(recipe.fit.warmup, float)
    assert recipe.fit.trust_remote_code is True
    assert recipe.distill.max_length is None and recipe.distill.domain is None
    assert recipe.fit.batch_size == FitConfig().batch_size  # untouched keys keep their defaults


def test_empty_recipe_and_empty_section(tmp_path):
    assert load_recipe(recipe_file(tmp_path, "# nothing yet\n")) == Recipe()
    assert load_recipe(recipe_file(tmp_path, "fit:\n", "b.yaml")) == Recipe()


def test_missing_recipe(tmp_path):
    assert recipe_error(tmp_path / "nope.yaml") == f"recipe {tmp_path / 'nope.yaml'} does not exist"


def test_recipe_that_is_not_yaml(tmp_path):
    path = recipe_file(tmp_path, "fit: [unclosed\n")
    assert recipe_error(path).startswith(f"{path}: not valid YAML")


def test_recipe_that_is_not_a_mapping(tmp_path):
    path = recipe_file(tmp_path, "- fit\n- distill\n")
    assert recipe_error(path).startswith(f"{path}: a recipe is a mapping of sections")


def test_section_that_is_not_a_mapping(tmp_path):
    path = recipe_file(tmp_path, "fit: 3\n")
    assert recipe_error(path) == f"{path}: section 'fit' must be a mapping of keys to values"


def test_unknown_section(tmp_path):
    path = recipe_file(tmp_path, "trainer:\n  epochs: 3\n")
    message = recipe_error(path)
    assert message.startswith(f"{path}: unknown section 'trainer'")
    assert "data, fit, distill" in message


def test_unknown_key(tmp_path):
    path = recipe_file(tmp_path, "distill:\n  temprature: 2\n")
    message = recipe_error(path)
    assert message.startswith(f"{path} [distill]: unknown key 'temprature'")
    assert "temperature" in message  # the valid keys are listed


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ("fit:\n  epochs: three\n", "epochs", "expected int, got 'three'"),
        ("fit:\n  epochs: 2.5\n", "epochs", "expected int, got 2.5"),
        ("fit:\n  epochs: true\n", "epochs", "expected int, got True"),
        ("fit:\n  lr: fast\n", "lr", "expected float, got 'fast'"),
        ("fit:\n  trust_remote_code: maybe\n", "trust_remote_code", "expected bool, got 'maybe'"),
        ("distill:\n  student: [tiny]\n", "student", "expected str, got ['tiny']"),
        ("distill:\n  max_length: long\n", "max_length", "expected int, got 'long'"),
        ("fit:\n  max_epochs: null\n", "max_epochs", "a value is required"),
    ],
)
def test_wrong_type(tmp_path, text, key, expected):
    path = recipe_file(tmp_path, text)
    assert recipe_error(path) == f"{path} [{text.split(':')[0]}]: key '{key}': {expected}"


def recipes() -> list:
    found = sorted((REPO_ROOT / "recipes").glob("*.yaml"))
    return [pytest.param(path, id=path.name) for path in found] or [
        pytest.param(None, marks=pytest.mark.skip(reason="recipes/ holds no recipe yet"))
    ]


@pytest.mark.parametrize("path", recipes())
def test_every_shipped_recipe_loads(path):
    load_recipe(path)
    first = path.read_text(encoding="utf-8").lstrip().splitlines()[0]
    assert first.startswith("#"), "every recipe opens with a comment: its purpose and command"


# --------------------------------------------------------------------------- overrides


def test_precedence_defaults_recipe_flags_set(tmp_path):
    recipe = load_recipe(recipe_file(tmp_path, "fit:\n  lr: 1.0e-4\n  epochs: 5\n  seed: 7\n"))
    apply_overrides(recipe, "fit", {"lr": 2e-4, "epochs": None, "batch_size": None}, ("fit.lr=3e-4",))
    assert recipe.fit.lr == 3e-4  # --set beats the flag
    apply_overrides(recipe, "fit", {"lr": 2e-4, "epochs": None})
    assert recipe.fit.lr == 2e-4  # the flag beats the recipe
    assert recipe.fit.epochs == 5  # a flag not given (None) leaves the recipe's value
    assert recipe.fit.seed == 7
    assert recipe.fit.batch_size == FitConfig().batch_size  # the default when nobody sets it


def test_set_reaches_any_section(tmp_path):
    recipe = Recipe()
    apply_overrides(
        recipe,
        "distill",
        {},
        ("distill.temperature=2", "data.split_seed=11", "fit.domain_loss=reversal", "data.path=a=b"),
    )
    assert recipe.distill.temperature == 2.0
    assert recipe.data.split_seed == 11
    assert recipe.fit.domain_loss == "reversal"
    assert recipe.data.path == "a=b"  # only the first '=' separates key and value


def test_later_set_wins():
    recipe = Recipe()
    apply_sets(recipe, ("fit.epochs=1", "fit.epochs=2"))
    assert recipe.fit.epochs == 2


def test_sets_alone_reach_every_section():
    recipe = Recipe()
    apply_sets(recipe, ("distill.epochs=5", "export.int8=false", "data.limit_per_domain=7"))
    assert (recipe.distill.epochs, recipe.export.int8, recipe.data.limit_per_domain) == (5, False, 7)


@pytest.mark.parametrize("item", ["fit.lr", "lr=3e-4", "=3", "fit=3"])
def test_set_malformed(item):
    with pytest.raises(UserError) as info:
        apply_overrides(Recipe(), "fit", {}, (item,))
    assert str(info.value) == f"--set {item!r}: expected section.key=value, e.g. distill.temperature=2"


def test_set_unknown_section_and_key():
    with pytest.raises(UserError, match=r"--set 'trainer.lr=1': unknown section 'trainer' \(valid: data, fit, distill"):
        apply_overrides(Recipe(), "fit", {}, ("trainer.lr=1",))
    with pytest.raises(UserError, match=r"--set fit.nope: unknown key 'nope' \(valid keys: .*epochs"):
        apply_overrides(Recipe(), "fit", {}, ("fit.nope=1",))


def test_set_wrong_type():
    with pytest.raises(UserError, match=r"--set fit.epochs: key 'epochs': expected int, got 'many'"):
        apply_overrides(Recipe(), "fit", {}, ("fit.epochs=many",))


def test_flag_unknown_key_is_a_user_error():
    with pytest.raises(UserError, match="command line: unknown key 'bogus'"):
        apply_overrides(Recipe(), "fit", {"bogus": 1})


def test_none_for_optional_fields():
    recipe = Recipe()
    apply_overrides(recipe, "distill", {}, ("distill.max_length=64", "distill.domain=books"))
    assert recipe.distill.max_length == 64 and recipe.distill.domain == "books"
    apply_overrides(recipe, "distill", {}, ("distill.max_length=none", "distill.domain=null"))
    assert recipe.distill.max_length is None and recipe.distill.domain is None
    # a flag left out (None) does not reset a value
    apply_overrides(recipe, "distill", {"max_length": None}, ("distill.max_length=32",))
    assert recipe.distill.max_length == 32


def test_none_for_a_required_field():
    with pytest.raises(UserError, match=r"--set distill.max_epochs: key 'max_epochs': a value is required"):
        apply_overrides(Recipe(), "distill", {}, ("distill.max_epochs=None",))


def test_set_coerces_strings():
    recipe = Recipe()
    apply_overrides(recipe, "fit", {}, ("fit.trust_remote_code=true", "fit.warmup=0", "data.limit_per_domain=10"))
    assert recipe.fit.trust_remote_code is True
    assert recipe.fit.warmup == 0.0 and isinstance(recipe.fit.warmup, float)
    assert recipe.data.limit_per_domain == 10


def test_apply_values_names_where():
    with pytest.raises(UserError, match=r"^somewhere: key 'epochs': expected int"):
        apply_values(FitConfig(), {"epochs": "x"}, "somewhere")


def test_choice():
    assert choice("meta", ["meta", "mix", "single"], "teacher mode") == "meta"
    with pytest.raises(UserError, match=r"unknown teacher mode 'mtl' \(valid: meta, mix, single\)"):
        choice("mtl", ["meta", "mix", "single"], "teacher mode")


def test_a_yaml_syntax_error_gives_file_line_and_column(tmp_path):
    # the message gave no line: in a long recipe the mistake had to be hunted for
    path = recipe_file(tmp_path, "fit:\n  epochs: 2\n lr: 3e-5\n")
    assert recipe_error(path) == (f"{path}: not valid YAML at line 3, column 2 "
                                  "(expected <block end>, but found '<block mapping start>')")
    path = recipe_file(tmp_path, "# a comment\ndistill:\n  method: meta\n  temperature: [1, 2\n", "flow.yaml")
    assert recipe_error(path).startswith(f"{path}: not valid YAML at line 5, column 1 (expected ',' or ']'")


def test_summary_names_only_what_differs_from_the_defaults():
    from metakd_cli.core.config import summary

    assert summary(FitConfig()) == "all defaults"
    assert summary(Recipe()) == "all defaults"
    assert summary(FitConfig(epochs=1, fraction_domains=["books", "dvd"], hold_out="dvd")) == \
        "hold_out=dvd fraction_domains=books,dvd epochs=1, the rest default"
    recipe = Recipe()
    recipe.data.path = "data.jsonl"
    recipe.distill.max_length = 64
    recipe.eval.domains = ["kitchen"]
    assert summary(recipe) == "data.path=data.jsonl distill.max_length=64 eval.domains=kitchen, the rest default"
