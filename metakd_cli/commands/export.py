"""`metakd export`: the student as ONNX (+ int8, + ORT Mobile), checked against PyTorch."""

from __future__ import annotations

import sys

import click


@click.command("export")
@click.option("--model", "model", type=click.Choice(["student", "teacher"]), default=None,
              help="Which model of the run folder to export [student].")
@click.option("--int8", is_flag=True, default=None, help="Also write model_quantized.onnx (int8) and check its accuracy.")
@click.option("--int8-mode", type=click.Choice(["static", "dynamic"]), default=None,
              help="static: activation scales calibrated once on training texts, so a text gets the same answer "
                   "alone or in any batch [default]; dynamic: scales computed per batch, padding included, so an "
                   "answer can move with the other texts of its batch.")
@click.option("--calibration", type=click.Choice(["minmax", "percentile", "entropy"]), default=None,
              help="How static int8 turns the calibration activations into ranges [percentile].")
@click.option("--target", type=click.Choice(["auto", "avx2", "avx512_vnni", "arm64"]), default=None,
              help="int8 format: auto = avx512_vnni where the CPU has VNNI, else avx2; arm64 on ARM "
                   "(implies --ort) [auto].")
@click.option("--per-channel/--per-tensor", "per_channel", default=None,
              help="int8 weight scales: one per output column (default) or one per matrix; on Amazon dev rows "
                   "the two lost the same (bench/results/ablation.json).")
@click.option("--ort", is_flag=True, default=None,
              help="Also write model.ort and required_operators.config for ONNX Runtime Mobile, checked against ONNX.")
@click.option("--opset", type=int, default=None, help="ONNX opset [18].")
@click.option("--max-drop", type=float, default=None,
              help="Fail (exit 1) when int8 loses more dev accuracy points than this vs fp32, after trying the "
                   "remedies [1.0].")
@click.option("--fuse", is_flag=True, default=None,
              help="Quantize a graph with fused attention, layer norm and GELU (ONNX Runtime contrib ops); "
                   "dynamic int8 only (implies --int8-mode dynamic); measure it on your CPU: `metakd eval` times "
                   "the export with and without it.")
@click.option("--trim-vocab", is_flag=True, default=None,
              help="Keep only the word pieces the training corpus uses (model and tokenizer together).")
@click.option("--keep-top", type=int, default=None, metavar="N",
              help="With --trim-vocab, also keep the first N other pieces by vocabulary rank [0].")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as one JSON object instead of tables.")
@click.option("--recipe", type=click.Path(dir_okay=False), default=None,
              help="YAML recipe whose export: section sets the defaults; flags override it.")
@click.option("--set", "sets", multiple=True, help="Override a recipe key: --set export.atol=1e-3 (repeatable).")
@click.pass_obj
def export(obj, as_json: bool, recipe: str | None, sets: tuple[str, ...], **flags) -> None:
    """Export the run's student (or teacher) to onnx/, loadable with plain optimum.onnxruntime.

    \b
    config.json and the tokenizer at the top of onnx/, the .onnx files in onnx/onnx/: the layout
    transformers.js loads as-is (dtype q8: model_quantized.onnx, fp32: model.onnx), which Optimum
    and onnxruntime read too, with one copy of the weights.

    \b
    Checks, saved in metrics/export.json: fp32 ONNX logits equal PyTorch's within 1e-4 on dev
    rows; with --trim-vocab, the trimmed model predicts what the untrimmed one does on dev rows
    whose pieces were all kept; with --int8, each of 64 dev rows alone vs in a batch of 32 (static
    int8 gives the same probability; dynamic may not), and dev accuracy per domain of int8 vs fp32 (when plain
    int8 loses too much, fp32 embeddings + classifier, per-channel (with --per-tensor),
    reduce-range and the other weight type are tried in that order); with --ort, model.ort
    predicts the same labels as the ONNX file it came from. When a check fails the new files
    stay in onnx.failed/, onnx/ and the manifest are left as they were, and the exit status is 1.
      metakd export --int8 --trim-vocab --keep-top 2000
      metakd export --int8 --target arm64
      metakd export --int8 --per-tensor
      metakd export --int8 --int8-mode dynamic
    """
    from metakd_cli.commands import console
    from metakd_cli.core.config import apply_overrides, load_recipe
    from metakd_cli.core.errors import UserError
    from metakd_cli.steps.export import export as run_export
    from metakd_cli.core.run_dir import RunDir

    recipe_config = load_recipe(recipe)
    apply_overrides(recipe_config, "export", flags, sets)  # defaults < recipe < flags and --set
    config = recipe_config.export
    # flags given on this command line that mean nothing without int8 (a recipe's are its own business)
    if flags["per_channel"] is not None and not config.int8:
        flag = "--per-channel" if flags["per_channel"] else "--per-tensor"
        raise UserError(f"{flag} sets how int8 weights are scaled; add --int8 or drop {flag}")
    for flag, value in (("--int8-mode", flags["int8_mode"]), ("--calibration", flags["calibration"])):
        if value is not None and not config.int8:
            raise UserError(f"{flag} sets how int8 is made; add --int8 or drop {flag}")
    if flags["calibration"] is not None and config.int8_kind == "dynamic":
        raise UserError("--calibration sets static int8's ranges; dynamic int8 has none: drop one of the two")
    result = run_export(config, RunDir(obj.run_dir), console.log)
    if as_json:  # metrics/export.json as written, with where the files went
        console.print_json({"passed": result.passed, "folder": str(result.folder), **result.to_json()})
    else:
        _render(result, console)
    if not result.passed:
        console.error(f"export checks failed: {'; '.join(result.failures)}; the new files are in {result.folder} "
                      "(onnx/ and the manifest are unchanged)")
        sys.exit(1)


def _render(result, console) -> None:
    """Tables of a metakd_cli.steps.export.ExportResult: dev accuracy per model, trimming, int8 remedies, sizes."""
    accuracy, int8, trim = result.dev_accuracy, result.int8, result.trim
    models = list(accuracy)
    domains = [d for d in accuracy["onnx"] if d != "average"] + ["average"]
    rows = []
    for d in domains:
        row = [d, *[accuracy[name].get(d) for name in models]]
        if int8 is not None:  # a signed change: an int8 gain reads +0.25, not "drop -0.25"
            drop = int8.drop_per_domain.get(d)
            row.append(None if drop is None else f"{0.0 - drop:+.2f}")  # 0.0 - 0.0 is +0.0, -0.0 is not
        if trim is not None:
            row.append(trim.unknown_rate_after.get(d))
        rows.append(row)
    columns = ["domain", *[f"{name} dev %" for name in models]] + (["int8 vs fp32"] if int8 is not None else []) \
        + (["[UNK] % trimmed"] if trim is not None else [])
    check = result.logits_check
    target = f", int8 {int8.mode} {int8.target}" if int8 is not None else ""
    console.print_table(
        f"{result.model} -> {result.folder} (opset {result.opset}{target}) — {result.seconds:.1f} s; fp32 ONNX vs "
        f"PyTorch max |diff| {check.max_abs_diff:.1e} on {check.rows} rows",
        columns,
        rows,
    )
    if trim is not None:
        agreement = "n/a" if trim.covered_agreement is None else f"{trim.covered_agreement:.1f}%"
        console.print_table(
            f"vocabulary trimmed: {trim.from_corpus:,} pieces from {trim.texts:,} training texts + {trim.from_top:,} "
            f"top + {trim.special} special; agreement with untrimmed on {trim.covered_rows} fully covered dev rows: "
            f"{agreement}",
            ["", "before", "after"],
            [["vocabulary", trim.vocab_before, trim.vocab_after],
             ["parameters", trim.parameters_before, trim.parameters_after],
             ["weights MB", trim.size_mb_before, trim.size_mb_after]],
        )
    if int8 is not None and len(int8.tried) > 1:
        chosen = int8.attempt if int8.passed else None
        console.print_table(
            f"int8 remedies tried (limit {int8.max_drop:g} points): " + (f"kept {chosen}" if chosen else "none passed"),
            ["attempt", "what", "vs fp32", "MB", "passed"],
            [[a.name, a.description, f"{0.0 - a.drop:+.2f}", a.size_mb, "yes" if a.passed else "no"]
             for a in int8.tried],
        )
    sizes = [[name, mb] for name, mb in result.size_mb.items()]
    title = f"sizes (MB); parameters {result.parameters:,} (ONNX initializers {result.onnx_initializers:,})"
    if result.mobile is not None:
        mobile = result.mobile
        title += (f"; model.ort: {mobile.mismatched_labels} labels differ from {mobile.source} on {mobile.rows} dev "
                  f"rows, opset {mobile.opset}, ORT Mobile: {mobile.recommendation}")
    console.print_table(title, ["file", "MB"], sizes)
