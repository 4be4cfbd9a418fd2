"""`metakd run RECIPE`: fit, distill, export and eval in order, skipping finished steps.

A step is skipped when the manifest records it with the same configuration (and, for fit,
the same data: its settings and the fingerprint of its rows) and every step before it was
skipped too; once a step runs, the later ones run again. Every step's settings, and the
domains they name, are checked against the data before the first step runs. Errors name the
recipe keys (``distill.method``) where the steps' own messages name their flags (``--method``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from metakd_cli.core.config import SECTIONS, Recipe, resolve_data_path
from metakd_cli.core.errors import ChecksFailed, UserError
from metakd_cli.core.run_dir import RunDir

STEPS = ("fit", "distill", "export", "eval")


@dataclass
class PipelineResult:
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    metrics: dict[str, dict] = field(default_factory=dict)
    eval_result: object | None = None


# a flag, maybe after the step that has it ("fit --max-length"); not after a letter, -, / or a quote
# (a path, a quoted value), and not a --no-X switch, whose key would read as the opposite
_FLAG = re.compile(r"(?<![\w/'\"-])(?:\b(" + "|".join(SECTIONS) + r") )?--(?!no-)([a-z][a-z0-9]*(?:-[a-z0-9]+)*)")
_KEYS = {section: {f.name for f in fields(getattr(Recipe(), section))} for section in SECTIONS}
_ALIASES = {"eval": {"domain": "domains", "model": "models"}}  # flags whose key has another name


def recipe_terms(message: str, section: str) -> str:
    """``message`` with each ``--flag`` written as the recipe key it sets: the key of the step
    named before it (``fit --max-length``), else the step's own (``section``), else the one
    section that has it; text in backticks (a command to run) and flags no section has (--set,
    --run-dir) are left as they are."""

    def key(match: re.Match) -> str:
        named, flag = match.group(1), match.group(2).replace("-", "_")
        owner = named or section
        name = _ALIASES.get(owner, {}).get(flag, flag)
        if name in _KEYS[owner]:
            return f"{owner}.{name}"
        owners = [s for s in SECTIONS if flag in _KEYS[s]]
        if len(owners) == 1:
            return f"{named} {owners[0]}.{flag}" if named else f"{owners[0]}.{flag}"
        return match.group(0)

    parts = message.split("`")
    parts[::2] = [_FLAG.sub(key, part) for part in parts[::2]]
    return "`".join(parts)


@contextmanager
def _in_recipe_terms(section: str) -> Iterator[None]:
    try:
        yield
    except UserError as exc:
        raise type(exc)(recipe_terms(str(exc), section)) from None  # ChecksFailed stays exit code 1


def parse_steps(text: str | None) -> tuple[str, ...]:
    """``--steps distill,eval`` as the steps to run, in the pipeline's order; None: all of them."""
    if text is None:
        return STEPS
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in STEPS]
    if unknown or not names:
        raise UserError(f"--steps {text}: give one or more of {','.join(STEPS)}, comma-separated"
                        + (f" ({', '.join(unknown)} is not one)" if unknown else ""))
    return tuple(step for step in STEPS if step in names)


def _data_key(recipe: Recipe) -> dict:
    data = asdict(recipe.data)
    data["path"] = str(Path(resolve_data_path(recipe.data.path)).expanduser().resolve())
    return data


def finished(run: RunDir, step: str, recipe: Recipe, fingerprint: str | None = None) -> bool:
    """Whether ``run`` records ``step`` (fit, distill or export) with ``recipe``'s settings, as `metakd run` skips
    it; for fit also the same data settings and, when ``fingerprint`` is given, the same rows. A setting added in
    a later metakd version reads as its default in a step recorded before it existed."""
    if not run.exists():
        return False
    manifest = run.load()
    recorded = manifest.steps.get(step)
    if recorded is None or not isinstance(recorded.get("config"), dict):
        return False
    defaults = asdict(getattr(Recipe(), step))
    if {**defaults, **recorded["config"]} != asdict(getattr(recipe, step)):
        return False
    if step == "fit" and (manifest.data.get("config") != _data_key(recipe)
                          or fingerprint is not None and manifest.data.get("fingerprint") != fingerprint):
        return False  # same files, edited rows
    return True


def run_pipeline(
    recipe: Recipe,
    run: RunDir,
    progress=None,
    log: Callable[[str], None] = print,
    warn: Callable[[str], None] = print,
    resume: bool = False,
    steps: tuple[str, ...] = STEPS,
) -> PipelineResult:
    """Run the recipe's ``steps`` (all four by default) into ``run``; raises UserError when export's checks
    fail. A step left out of ``steps`` is neither run nor checked for being finished."""
    from metakd_cli.data.dataset import load_dataset
    from metakd_cli.steps.distill import check_teacher, distill
    from metakd_cli.steps.distill import validate as validate_distill
    from metakd_cli.steps.evaluate import evaluate_run
    from metakd_cli.steps.evaluate import validate as validate_eval
    from metakd_cli.steps.export import export
    from metakd_cli.steps.export import validate as validate_export
    from metakd_cli.steps.fit import fit
    from metakd_cli.steps.fit import validate as validate_fit

    # a recipe mistake in a later step fails now, not after an hour of fitting; a step left out of `steps` is
    # not checked (a teacher-only run need not carry a distill section that suits its teacher)
    if "fit" in steps:
        with _in_recipe_terms("fit"):
            validate_fit(recipe.fit)
    if "distill" in steps:
        with _in_recipe_terms("distill"):
            validate_distill(recipe.distill)
            check_teacher(recipe.distill, recipe.fit.teacher_mode, recipe.fit.hold_out)  # the teacher fit makes
            _check_student(recipe)
    if "export" in steps:
        with _in_recipe_terms("export"):
            validate_export(recipe.export)
    if "eval" in steps:
        with _in_recipe_terms("eval"):
            validate_eval(recipe.eval)
            if "export" in steps:
                _check_outputs(recipe)
    with _in_recipe_terms("data"):
        dataset = load_dataset(recipe.data)  # the domains every step names must be the data's
    named = {"fit": (("fit.hold_out", [recipe.fit.hold_out]), ("fit.fraction_domains", recipe.fit.fraction_domains)),
             "distill": (("distill.domain", [recipe.distill.domain]),
                         ("distill.teacher_domain", [recipe.distill.teacher_domain])),
             "eval": (("eval.domains", recipe.eval.domains),)}
    for key, names in (pair for step in steps for pair in named.get(step, ())):
        dataset.check_domains([n for n in names or [] if n is not None], key)
    fingerprint = dataset.fingerprint()
    result = PipelineResult()
    rerun = False
    with run.lock("run", log, create=True):  # one writer from the first step to the last
        for step in steps:
            if step != "eval" and not rerun and finished(run, step, recipe, fingerprint):
                log(f"{step}: already done with this configuration, skipped")
                result.skipped.append(step)
                continue
            rerun = True
            log(f"{step}: running")
            with _in_recipe_terms(step):
                if step == "fit":
                    result.metrics["fit"] = fit(recipe.data, recipe.fit, run, resume, progress, log, warn).metrics
                elif step == "distill":
                    result.metrics["distill"] = distill(recipe.distill, run, resume, progress, log, warn).metrics
                elif step == "export":
                    exported = export(recipe.export, run, log)
                    if not exported.passed:
                        raise ChecksFailed(
                            f"export checks failed: {'; '.join(exported.failures)}; files kept in {exported.folder}"
                        )
                    result.metrics["export"] = exported.metrics
                else:
                    result.eval_result = evaluate_run(recipe.eval, run, log)
            result.ran.append(step)
    return result


def _check_student(recipe: Recipe) -> None:
    """distill's length against the teacher's and the student's positions, and the student's
    weights (safetensors), which distill checks only once the teacher is fitted (fit checks its
    own length against the teacher before training)."""
    from metakd_cli.steps.distill import check_student_length, check_teacher_length
    from metakd_cli.models.loading import no_safetensors_advice, position_limit, resolve_model, safe_weights_known_missing

    fit, distill = recipe.fit, recipe.distill
    if distill.max_length is not None:
        check_teacher_length(distill.max_length, position_limit(resolve_model(fit.teacher), fit.trust_remote_code),
                             fit.teacher)
    source = distill.student_init if distill.student == "tinybert4" else distill.student
    if distill.student == "tiny" or source in (None, "random"):  # the teacher's own positions
        return
    if source == "minilm4":  # a preset cut from the packaged MiniLM-L6: its positions, its weights
        from metakd_cli.models.packaged import MINILM

        source = MINILM
    where = resolve_model(source)
    if safe_weights_known_missing(where):  # distill would refuse it only after the fit
        flag = "--student-init" if distill.student == "tinybert4" else "--student"
        raise UserError(f"{flag} {source}: {no_safetensors_advice(source)}")
    limit = position_limit(where, distill.trust_remote_code)
    check_student_length(distill.max_length or fit.max_length, limit, distill.max_length is not None, source)


def _check_outputs(recipe: Recipe) -> None:
    """eval asks only for models the run makes."""
    if "int8" in (recipe.eval.models or []) and not recipe.export.int8:
        raise UserError("--model int8 asks eval for the int8 model, but --int8 is off, so export makes none; "
                        "set export.int8: true or leave int8 out of eval.models")
