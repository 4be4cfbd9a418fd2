"""`metakd run RECIPE`: fit, distill, export and eval in order, skipping finished steps.

A step is skipped when the manifest records it with the same configuration (and, for fit,
the same data: its settings and the fingerprint of its rows) and every step before it was
skipped too; once a step runs, the later ones run again. Every step's settings, and the
domains they name, are checked against the data before the first step runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from metakd_cli.config import Recipe, resolve_data_path
from metakd_cli.errors import UserError
from metakd_cli.run_dir import RunDir

STEPS = ("fit", "distill", "export", "eval")


@dataclass
class PipelineResult:
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    metrics: dict[str, dict] = field(default_factory=dict)
    eval_result: object | None = None


def _data_key(recipe: Recipe) -> dict:
    data = asdict(recipe.data)
    data["path"] = str(Path(resolve_data_path(recipe.data.path)).expanduser().resolve())
    return data


def _finished(run: RunDir, step: str, config: dict, recipe: Recipe, fingerprint: str) -> bool:
    if not run.exists():
        return False
    manifest = run.load()
    recorded = manifest.steps.get(step)
    if recorded is None or recorded.get("config") != config:
        return False
    if step == "fit" and (manifest.data.get("config") != _data_key(recipe)
                          or manifest.data.get("fingerprint") != fingerprint):  # same files, edited rows
        return False
    return True


def run_pipeline(
    recipe: Recipe,
    run: RunDir,
    progress=None,
    log: Callable[[str], None] = print,
    warn: Callable[[str], None] = print,
) -> PipelineResult:
    """Run every step the recipe describes into ``run``; raises UserError when export's checks fail."""
    from metakd_cli.data import load_dataset
    from metakd_cli.distill import check_teacher, distill
    from metakd_cli.distill import validate as validate_distill
    from metakd_cli.evaluate import evaluate_run
    from metakd_cli.evaluate import validate as validate_eval
    from metakd_cli.export import export
    from metakd_cli.export import validate as validate_export
    from metakd_cli.fit import fit
    from metakd_cli.fit import validate as validate_fit

    # a recipe mistake in a later step fails now, not after an hour of fitting
    validate_fit(recipe.fit)
    validate_distill(recipe.distill)
    check_teacher(recipe.distill, recipe.fit.teacher_mode, recipe.fit.hold_out)  # the teacher fit makes serves it
    validate_export(recipe.export)
    validate_eval(recipe.eval)
    dataset = load_dataset(recipe.data)  # the domains every step names must be the data's
    for flag, names in (("--hold-out", [recipe.fit.hold_out]), ("--fraction-domains", recipe.fit.fraction_domains),
                        ("--domain", [recipe.distill.domain]), ("--teacher-domain", [recipe.distill.teacher_domain]),
                        ("eval --domain", recipe.eval.domains)):
        dataset.check_domains([n for n in names or [] if n is not None], flag)
    fingerprint = dataset.fingerprint()
    result = PipelineResult()
    rerun = False
    configs = {"fit": asdict(recipe.fit), "distill": asdict(recipe.distill), "export": asdict(recipe.export)}
    for step in STEPS:
        if step != "eval" and not rerun and _finished(run, step, configs[step], recipe, fingerprint):
            log(f"{step}: already done with this configuration, skipped")
            result.skipped.append(step)
            continue
        rerun = True
        log(f"{step}: running")
        if step == "fit":
            result.metrics["fit"] = fit(recipe.data, recipe.fit, run, progress=progress, log=log).metrics
        elif step == "distill":
            result.metrics["distill"] = distill(recipe.distill, run, progress=progress, log=log, warn=warn).metrics
        elif step == "export":
            exported = export(recipe.export, run, log)
            if not exported.passed:
                raise UserError(
                    f"export checks failed: {'; '.join(exported.failures)}; files kept in {exported.folder}"
                )
            result.metrics["export"] = exported.metrics
        else:
            result.eval_result = evaluate_run(recipe.eval, run, log)
        result.ran.append(step)
    return result
