"""`metakd recipes ls|cp`: the recipes that ship with metakd."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def recipes() -> None:
    """List or copy the bundled YAML recipes (run one with `metakd run NAME`)."""


@recipes.command("ls")
def list_recipes() -> None:
    """Bundled recipes and what each is for."""
    from metakd_cli.commands import console
    from metakd_cli.core.config import bundled

    rows = [[path.stem, purpose(path.read_text(encoding="utf-8"))]
            for path in sorted(bundled("recipes").glob("*.yaml"))]
    console.print_table("bundled recipes", ["name", "purpose"], rows, left=2)


def purpose(recipe: str) -> str:
    """A recipe's opening comment, up to the command that runs it (``metakd run ...``)."""
    words = []
    for line in recipe.splitlines():
        text = line.removeprefix("#").strip()
        if not line.startswith("#") or not text or text.startswith("metakd "):
            break
        words.append(text)
    return " ".join(words).split(" metakd run ")[0].rstrip(":; ")


@recipes.command("cp")
@click.argument("name")
@click.argument("destination", required=False, type=click.Path(path_type=Path))
def copy_recipe(name: str, destination: Path | None) -> None:
    """Copy bundled recipe NAME to DESTINATION (default ./NAME.yaml) to edit it."""
    from metakd_cli.commands import console
    from metakd_cli.core.config import find_recipe
    from metakd_cli.core.errors import UserError
    from metakd_cli.core.run_dir import atomic_write_text

    source = find_recipe(name)
    target = destination or Path(f"{source.stem}.yaml")
    if target.is_dir():
        target = target / source.name
    if target.exists():
        raise UserError(f"{target} already exists; give another destination")
    atomic_write_text(target, source.read_text(encoding="utf-8"))
    console.log(f"copied {source.stem} to {target}")
