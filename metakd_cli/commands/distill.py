"""`metakd distill`: meta-distil the run's teacher into a small student."""

from __future__ import annotations

import click


@click.command()
@click.option("--student", default=None, help="tiny (default: 4 of the teacher's layers; minilm4 for a teacher bigger than MiniLM-L6) | "
                   "minilm4 (4 layers of the packaged MiniLM-L6, ~19M) | tinybert4 | a folder or hub id.")
@click.option("--student-init", default=None, help="For tinybert4: a general-distilled folder or hub id, or `random`.")
@click.option("--method", default=None,
              help="meta (default) | tinybert (lambda = 1, no domain term) | kd (logits only) | "
                   "mtn (logits only, averaged over all single-domain teachers) | "
                   "none (no teacher: the same student on the gold labels alone, the baseline).")
@click.option("--student-layers", default=None, metavar="1,3,5,6",
              help="Which layers a cut student (tiny, minilm4) keeps, 1-based [1,3,5,6 of 6; else evenly spaced].")
@click.option("--domain", default=None, help="Distil for one domain only (the paper's setting); default all domains.")
@click.option("--teacher-domain", default=None, metavar="DOMAIN",
              help="Single-mode teachers: distil from this domain's teacher [--domain's].")
@click.option("--train-fraction", type=float, default=None,
              help="Distil on a seeded, label-stratified fraction of the training rows (data-scarce setting) [1].")
@click.option("--intermediate-epochs", type=int, default=None,
              help="Stage 1 (layer-wise) epochs, exactly (0: none) [chosen on dev: see --intermediate-max-epochs].")
@click.option("--intermediate-max-epochs", type=int, default=None,
              help="Stage 1's ceiling when --intermediate-epochs is not given; a student with the teacher's head is "
                   "scored on dev and stopped by --patience [3].")
@click.option("--epochs", type=int, default=None,
              help="Stage 2 (soft labels) epochs, exactly [chosen on dev: see --max-epochs, --patience].")
@click.option("--max-epochs", type=int, default=None, help="Stage 2's ceiling when --epochs is not given [10].")
@click.option("--patience", type=int, default=None,
              help="Stop stage 2 after N dev scorings without a gain (0: never) [10].")
@click.option("--eval-every", type=int, default=None,
              help="Score dev every N steps of stage 2 (0: at epoch ends) [about ten times an epoch].")
@click.option("--temperature", type=float, default=None, help="Soft-label temperature; the soft term is scaled by T^2 [1].")
@click.option("--augment", type=int, default=None, metavar="K",
              help="K rows derived from each training row (windows of long texts, masking, deletion, swap, spans, "
                   "same-domain words) that the teacher labels for stage 2 [0].")
@click.option("--transfer", multiple=True, metavar="PATH",
              help="Unlabelled texts the teacher labels for stage 2 (repeatable): a table with a domain column, or a "
                   "folder with one file per domain; a row equal to a dev or test text is dropped.")
@click.option("--transfer-stage1", is_flag=True, default=None,
              help="Run stage 1 over the transfer set too (each row's lambda from its t and the teacher's "
                   "confidence) [stage 1 reads the labelled rows only].")
@click.option("--label-with", default=None, metavar="auto|torch|onnx",
              help="What labels the transfer set: the teacher's fp32 ONNX export (checked against PyTorch on the "
                   "first rows) or PyTorch [auto: ONNX on a CPU for 2,048 rows or more].")
@click.option("--gold-weight", type=float, default=None,
              help="Weight of a gold-label cross-entropy beside the soft labels in stage 2 [0].")
@click.option("--head-warmup", type=int, default=None, metavar="EPOCHS",
              help="Train a new head alone on the frozen body's [CLS] states for N epochs before stage 2, the best "
                   "on dev kept (0: off) [10 for a head not cut from the teacher, else 0].")
@click.option("--batch-size", type=int, default=None,
              help="Global batch size; under accelerate launch / torchrun each of N processes takes batch/N rows "
                   "(a multiple of N) [32].")
@click.option("--lr", type=float, default=None,
              help="Stage 2 learning rate [1e-4 for a student of 4 layers or fewer, 3e-5 deeper; "
                   "3e-4 for --student-init random].")
@click.option("--intermediate-lr", type=float, default=None,
              help="Stage 1 learning rate, constant [5e-5; 5e-4 for --student-init random].")
@click.option("--gamma", type=float, default=None, help="Weight of the domain-feature term (meta) [0.5].")
@click.option("--max-length", type=int, default=None, help="Tokens per example [the teacher's].")
@click.option("--seed", type=int, default=None, help="Training seed [42].")
@click.option("--trust-remote-code", is_flag=True, default=None, help="Allow model code from the hub (off by default).")
@click.option("--mixed-precision", default=None, metavar="no|bf16|fp16",
              help="Mixed precision through accelerate (fp16: GPU only) [the launcher's setting, else no].")
@click.option("--trim-vocab", is_flag=True, default=None,
              help="Save the student with only the word pieces its training texts use (a much smaller file).")
@click.option("--keep-top", type=int, default=None, help="With --trim-vocab, also keep N other pieces by rank [0].")
@click.option("--recipe", type=click.Path(dir_okay=False), default=None, help="YAML recipe; flags override it.")
@click.option("--set", "sets", multiple=True, help="Override a recipe key: --set distill.temperature=2 (repeatable).")
@click.option("--resume", is_flag=True, help="Continue an interrupted distill from its last checkpoint.")
@click.pass_obj
def distill(obj, recipe: str | None, sets: tuple[str, ...], resume: bool, **kwargs) -> None:
    """Distil the teacher in the run folder into student/ (a plain transformers classifier)."""
    from metakd_cli.commands import console
    from metakd_cli.core.config import apply_overrides, load_recipe, summary
    from metakd_cli.core.run_dir import RunDir

    config = load_recipe(recipe)
    kwargs["transfer"] = list(kwargs["transfer"]) or None  # click's repeatable option: a tuple, empty when not given
    apply_overrides(config, "distill", kwargs, sets)
    console.log(f"distill config: {summary(config.distill)} (all of it goes to manifest.json)")

    from metakd_cli.steps.distill import distill as run_distill

    result = run_distill(config.distill, RunDir(obj.run_dir), resume, console.TrainingProgress(), console.log, console.warn)
    from metakd_cli.core.processes import is_main

    if not is_main():  # several processes: the main one shows the result
        return
    domains = [d for d in result.test_accuracy if d != "average"] + ["average"]
    rows = [[f"{d} (held out)" if d == result.held_out else d, result.teacher_test_accuracy.get(d),
             result.dev_accuracy.get(d), result.test_accuracy.get(d)] for d in domains]
    teacher_column = "teachers' mean test %" if result.method == "mtn" else "teacher test %"
    console.print_table(
        f"student ({result.method}, {result.student}) in {obj.run_dir}/student — {result.seconds / 60:.1f} min, "
        f"agreement with teacher {result.agreement_with_teacher:.1f}%",
        ["domain", teacher_column, "student dev %", "student test %"],
        rows,
    )
