"""Model cards: ``student/README.md`` and ``onnx/README.md``, with Hugging Face metadata, from the run's
metrics only.

A card says what the model is, its teacher, the method and its settings, the domains, a per-domain
table of test accuracy (teacher, student, ONNX, int8) with agreement, sizes and measured speed with
the CPU named, how to load it, and its limits. Every figure comes from ``metrics/*.json`` or the
manifest (sizes may be read from the files themselves); one that no step has measured is written
"not measured" with the command that measures it, never estimated. `distill`, `export` and `eval`
rewrite the cards at their end, so each card holds the latest figures. An eval record counts only
for models made before it ran; a folder the manifest marks stale keeps its card as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from metakd_cli import __version__
from metakd_cli.core.run_dir import atomic_write_text, read_json_object
from metakd_cli.core.timing import why_unsteady, with_spread

CARD = "README.md"
MODELS = ("teacher", "student", "onnx", "int8")
MADE_BY = {"teacher": "fit", "student": "distill", "onnx": "export", "int8": "export"}
NOT_MEASURED = "not measured"
# teachers metakd names: (hub id, license, language); any other teacher's license and language are not known here
KNOWN_BASES = {
    "all-MiniLM-L6-v2": ("sentence-transformers/all-MiniLM-L6-v2", "apache-2.0", "en"),
    "sentence-transformers/all-MiniLM-L6-v2": ("sentence-transformers/all-MiniLM-L6-v2", "apache-2.0", "en"),
    "mpnet-base": ("sentence-transformers/all-mpnet-base-v2", "apache-2.0", "en"),
    "sentence-transformers/all-mpnet-base-v2": ("sentence-transformers/all-mpnet-base-v2", "apache-2.0", "en"),
    "bert-base-uncased": ("google-bert/bert-base-uncased", "apache-2.0", "en"),
    "google-bert/bert-base-uncased": ("google-bert/bert-base-uncased", "apache-2.0", "en"),
    "huawei-noah/TinyBERT_General_4L_312D": ("huawei-noah/TinyBERT_General_4L_312D", None, "en"),
}


@dataclass
class MeasuredSpeed:
    """One model's speed as the eval record that describes it has it: medians over the timing rounds with the
    fastest and slowest round (empty from an eval before rounds), the throughput over the teacher's timed in the
    same rounds, and why those rounds were unsteady (empty: steady)."""

    latency_ms: float  # batch 1
    throughput: float  # rows/s at eval's batch size (32)
    latency_spread: list[float] = field(default_factory=list)
    throughput_spread: list[float] = field(default_factory=list)
    speedup: float | None = None  # None: the teacher was not timed in the same rounds
    rounds: int | None = None
    unsteady: list[str] = field(default_factory=list)


def _time(value: object) -> float | None:
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return None


class RunFigures:
    """What the run's metrics say, model by model; a figure absent here is not measured."""

    def __init__(self, run):
        self.run = run
        self.manifest = run.load()
        self.steps = self.manifest.steps
        self.fit = read_json_object(run.metrics / "fit.json")
        self.distill = read_json_object(run.metrics / "distill.json") if "distill" in self.steps else {}
        self.export = read_json_object(run.metrics / "export.json") if "export" in self.steps else {}
        from metakd_cli.core.run_dir import stale_artifacts

        self.stale = stale_artifacts(self.manifest)  # {"student" / "onnx": why}: made from an earlier step
        self.eval = {name: record for name, record in self._fresh_eval().items() if not self.is_stale(name)}

    def is_stale(self, model: str) -> bool:
        return ("onnx" if model == "int8" else model) in self.stale

    def _fresh_eval(self) -> dict[str, dict]:
        """{model: its test-split eval record} for models that eval scored after they were made.

        Each record of eval.json (the latest of every selection) is judged by its own ``written`` time against
        the step that made the model; a record without one (older metakd) by the file's time, which every
        rewrite refreshes. Among the fresh records of a model, the one covering the most domains, then the
        latest, wins.
        """
        path = self.run.metrics / "eval.json"
        record = read_json_object(path)
        if not record:
            return {}
        file_written = int(path.stat().st_mtime)
        selections = record.get("selections")
        records = (list(selections.values()) if isinstance(selections, dict) else []) or [record]
        out: dict[str, tuple[tuple[int, float], dict]] = {}
        for entry in records:
            if not isinstance(entry, dict) or entry.get("split") != "test" or not entry.get("bucketing", True):
                continue
            written = _time(entry.get("written")) if entry.get("written") else None
            written = file_written if written is None else written
            for model in entry.get("models") or []:
                if not isinstance(model, dict):
                    continue
                name = model.get("name")
                made = _time(self.steps.get(MADE_BY.get(name, ""), {}).get("finished"))
                if made is None or written < made:
                    continue  # scored before this model was (re)made: its figures describe another model
                rank = (len(model.get("accuracy") or {}), written)
                if name not in out or rank >= out[name][0]:
                    out[name] = (rank, {**model, "cpu": entry.get("cpu") or {}, "threads": entry.get("threads"),
                                        "timing": entry.get("timing") or {}})
        return {name: model for name, (_, model) in out.items()}

    def accuracy(self, model: str) -> tuple[dict[str, float], str] | None:
        """(per-domain test accuracy, where it comes from) of one model, or None."""
        if model in self.eval and self.eval[model].get("accuracy"):
            return self.eval[model]["accuracy"], "metakd eval"
        if model == "teacher" and self.fit.get("test_accuracy"):
            return self.fit["test_accuracy"], "metakd fit"
        if model == "student" and self.distill.get("test_accuracy"):
            return self.distill["test_accuracy"], "metakd distill"
        return None

    def agreement(self, model: str) -> dict[str, float] | None:
        if model in self.eval and self.eval[model].get("agreement"):
            return self.eval[model]["agreement"]
        if model == "student" and self.distill.get("test_agreement_with_teacher") is not None:
            return {"all": self.distill["test_agreement_with_teacher"]}
        return None

    def size_mb(self, model: str) -> float | None:
        if model in self.eval and self.eval[model].get("size_mb") is not None:
            return self.eval[model]["size_mb"]
        sizes = (self.export.get("size_mb") or {}) if "onnx" not in self.stale else {}
        size = {"student": sizes.get("pytorch"), "onnx": sizes.get("model.onnx"),
                "int8": sizes.get("model_quantized.onnx")}.get(model)
        return size if size is not None else self._size_on_disk(model)

    def _size_on_disk(self, model: str) -> float | None:
        """The weights' size as the files on disk say (what eval measures), when no step recorded it."""
        from metakd_cli.models.inference import size_mb, weights_size_mb

        folder = {"teacher": self.run.teacher, "student": self.run.student}.get(model)
        if folder is not None:
            return weights_size_mb(folder) if (folder / "config.json").is_file() else None
        path = exported_file(self.run, model)
        return size_mb(path, path.with_name(path.name + "_data")) if path.is_file() else None

    def speed(self, model: str) -> MeasuredSpeed | None:
        """Latency at batch 1 and rows/s at batch 32 as eval measured them, with their spread over the rounds."""
        entry = self.eval.get(model)
        if not entry or entry.get("latency_ms") is None:
            return None
        timing = entry.get("timing") or {}
        speedup = next((v for k, v in (entry.get("speedup_vs_teacher") or {}).items() if k != "batch_1"), None)
        return MeasuredSpeed(entry["latency_ms"], entry["throughput"], entry.get("latency_ms_spread") or [],
                             entry.get("throughput_spread") or [], speedup, timing.get("rounds"),
                             list(timing.get("why") or []) if timing.get("unsteady") else [])

    def cpu(self) -> str | None:
        for entry in self.eval.values():
            cpu = entry.get("cpu") or {}
            if cpu.get("model"):
                threads = (entry.get("threads") or {}).get("torch")
                return f"{cpu['model']} ({cpu.get('cores', '?')} cores" + (
                    f"; torch threads {threads})" if threads else ")")
        return None


def exported_file(run, model: str) -> Path:
    """The run's ONNX file of ``model`` (onnx: fp32, int8), in either export layout."""
    from metakd_cli.models.inference import INT8_FILE, ONNX_FILE, onnx_model_path

    return onnx_model_path(run.onnx, INT8_FILE if model == "int8" else ONNX_FILE)


def _pct(value: object) -> str:
    return f"{value:.1f}" if isinstance(value, (int, float)) else NOT_MEASURED


def _teacher_id(figures: RunFigures) -> str:
    config = figures.steps.get("fit", {}).get("config") or {}
    return str(config.get("teacher") or figures.fit.get("teacher") or "")


def _student_origin(figures: RunFigures) -> str:
    """The model the student's weights started from."""
    config = figures.steps.get("distill", {}).get("config") or {}
    if config.get("student") == "tiny":
        return _teacher_id(figures)
    if config.get("student") == "tinybert4":
        return str(config.get("student_init") or "")
    return str(config.get("student") or "")


def _metadata(figures: RunFigures, onnx: bool) -> list[str]:
    teacher = _teacher_id(figures)
    known = KNOWN_BASES.get(teacher)
    bases = [KNOWN_BASES.get(name, (name,))[0] for name in (_student_origin(figures), teacher)
             if name and (name in KNOWN_BASES or _is_hub_id(name))]
    tags = ["text-classification", "distillation", "meta-kd", "metakd"]
    current = "onnx" not in figures.stale  # a stale onnx/ belongs to an earlier student
    if current and exported_file(figures.run, "onnx").is_file():
        tags.append("onnx")
    if current and exported_file(figures.run, "int8").is_file():
        tags.append("int8")
    lines = ["---", f"license: {known[1] if known and known[1] else 'other'}"]
    if known and known[2]:
        lines += ["language:", f"- {known[2]}"]
    lines += [f"library_name: {'onnx' if onnx else 'transformers'}", "pipeline_tag: text-classification", "tags:"]
    lines += [f"- {tag}" for tag in tags]
    if bases:
        lines += ["base_model:", *[f"- {base}" for base in dict.fromkeys(bases)]]
    return [*lines, "---", ""]


def _is_hub_id(name: str) -> bool:
    return "/" in name and not Path(name).expanduser().exists() and not name.startswith((".", "/", "~"))


def _settings(config: dict, keys: tuple[str, ...]) -> str:
    return ", ".join(f"`{key}` {config[key]}" for key in keys if config.get(key) is not None)


def _describe(figures: RunFigures, onnx: bool) -> list[str]:
    run, steps = figures.run, figures.steps
    data = figures.manifest.data
    domains, labels = data.get("domains") or [], data.get("labels") or []
    fit_cfg = steps.get("fit", {}).get("config") or {}
    distill_cfg = steps.get("distill", {}).get("config") or {}
    student = read_json_object(run.student / "config.json")
    params = (figures.distill.get("parameters") or {}).get("student")
    shape = ""
    if student:
        shape = (f"a {student.get('num_hidden_layers', '?')}-layer, {student.get('hidden_size', '?')}-wide "
                 f"{student.get('model_type', '')} ")
    count = (f"{params / 1e6:.1f}M" if params >= 1e5 else f"{params:,}") if params else ""
    what = f"{shape}text classifier" + (f" ({count} parameters)" if count else "")
    if onnx:
        export = figures.export
        files = ["`model.onnx` (fp32)"] + (["`model_quantized.onnx` (int8, "
                                             f"{(export.get('int8_check') or {}).get('mode', 'dynamic')}, "
                                             f"format {export.get('target')})"] if export.get("int8") else [])
        if export.get("model") == "teacher":
            what = "the teacher's"
        what = f"the ONNX export of {what}: {', '.join(files)}, opset {export.get('opset', '?')}"
    teacher = _teacher_id(figures)
    lines = [
        f"# {'ONNX ' if onnx else ''}{'teacher' if onnx and figures.export.get('model') == 'teacher' else 'student'}"
        " distilled with metakd",
        "",
        f"This is {what}, distilled with [metakd](https://pypi.org/project/metakd-cli/) {__version__} "
        "by Meta-KD (Pan et al., ACL 2021, \"Meta-KD: A Meta Knowledge Distillation Framework for Language "
        "Model Compression across Domains\").",
        "",
        f"- **Labels:** {', '.join(f'`{label}`' for label in labels)}",
        f"- **Domains:** {', '.join(f'`{domain}`' for domain in domains)} "
        f"(data: `{data.get('config', {}).get('path') or data.get('source', '?')}`)",
        f"- **Teacher:** `{teacher}`, mode `{fit_cfg.get('teacher_mode', '?')}` ("
        + _settings(fit_cfg, ("prototypes", "pooling", "domain_loss", "alpha", "zeta", "gamma", "epochs", "lr",
                              "max_length")) + ")",
        f"- **Student:** `{distill_cfg.get('student', '?')}`, started from `{_student_origin(figures) or '?'}`",
        f"- **Method:** `{distill_cfg.get('method', '?')}` ("
        + _settings(distill_cfg, ("intermediate_epochs", "epochs", "temperature", "gamma", "domain", "batch_size"))
        + ")",
    ]
    lam = figures.distill.get("lambda")
    if lam:
        lines.append(f"- **lambda** (each training row's weight in stage 1): mean {lam['mean']:.3f}, "
                     f"min {lam['min']:.3f}, max {lam['max']:.3f}")
    if teacher not in KNOWN_BASES or not KNOWN_BASES[teacher][1]:
        lines.append("- **License:** `other` above: metakd does not know this teacher's license or your data's; "
                     "set `license` (and `language`) to theirs before publishing")
    rows = figures.distill.get("train_rows") or {}
    if rows:
        lines.append("- **Training rows:** " + ", ".join(f"`{d}` {n:,}" for d, n in rows.items()))
    transfer = figures.distill.get("transfer")
    if transfer:
        kinds = ", ".join(f"{kind} {n:,}" for kind, n in sorted(transfer["by_kind"].items()) if kind != "transfer")
        parts = ([f"{transfer['augment_rows']:,} rows derived from the training rows (`--augment "
                  f"{distill_cfg.get('augment')}`: {kinds})"] if transfer.get("augment_rows") else [])
        parts += ([f"{transfer['transfer_rows']:,} unlabelled texts (`--transfer`)"] if transfer.get("transfer_rows")
                  else [])
        lines.append(f"- **Transfer set:** {' and '.join(parts)}, learnt from the teacher's soft labels only")
    return [*lines, ""]


def _results(figures: RunFigures) -> list[str]:
    domains = list(figures.manifest.data.get("domains") or [])
    keys = domains + (["average"] if len(domains) > 1 else [])
    present = [m for m in MODELS if not figures.is_stale(m) and (
        figures.accuracy(m) is not None or m in ("teacher", "student")
        or (m in ("onnx", "int8") and exported_file(figures.run, m).is_file()))]
    accuracy = {m: figures.accuracy(m) for m in present}
    agreement = {m: figures.agreement(m) for m in present}
    lines = ["## Results", "", "Accuracy (%) on the test split, per domain:", "",
             "| domain | " + " | ".join(present) + " |", "|---" * (len(present) + 1) + "|"]
    for key in keys:
        lines.append(f"| {key} | " + " | ".join(_pct((accuracy[m] or ({}, ""))[0].get(key)) for m in present) + " |")
    lines.append("| agreement with the teacher (all rows) | " + " | ".join(
        "-" if m == "teacher" else _pct((agreement[m] or {}).get("all")) for m in present) + " |")
    sources = sorted({f"{m}: `{accuracy[m][1]}`" for m in present if accuracy[m]})
    lines += ["", f"Figures from {', '.join(sources) or 'no step yet'}."]
    missing = [m for m in present if accuracy[m] is None]
    if missing:
        lines.append(f"{', '.join(missing)}: not measured on test; `metakd eval` measures them.")
    export_check = figures.export.get("int8_check") or {}
    if export_check.get("drop") is not None:
        change = -export_check["drop"]  # a drop is fp32 minus int8: its negative is int8's signed change
        lines.append(f"The export check measured int8 at {change:+.2f} points against fp32 on "
                     f"{export_check.get('rows', '?')} dev rows (limit {export_check.get('max_drop')}).")
    cpu = figures.cpu()
    lines += ["", "Size and speed" + (f", measured by `metakd eval` on {cpu}:" if cpu else ":"), "",
              "| model | size MB | ms per row (batch 1) | rows/s (batch 32) |", "|---|---|---|---|"]
    speeds = {model: figures.speed(model) for model in present}
    for model, speed in speeds.items():
        size = figures.size_mb(model)
        lines.append(f"| {model} | {f'{size:.1f}' if size is not None else NOT_MEASURED} | "
                     + (f"{with_spread(speed.latency_ms, speed.latency_spread)} | "
                        f"{with_spread(speed.throughput, speed.throughput_spread, 1)} |"
                        if speed else f"{NOT_MEASURED} | {NOT_MEASURED} |"))
    if not cpu:
        lines.append("\nSpeed is not measured yet: `metakd eval` measures it on the CPU it runs on.")
    return [*lines, *_speed_notes({m: s for m, s in speeds.items() if s}), ""]


def _speed_notes(speeds: dict[str, MeasuredSpeed]) -> list[str]:
    """How the speeds were timed, the speed-ups over the teacher from the same rounds, and whether the rounds
    were unsteady."""
    rounds = sorted({s.rounds for s in speeds.values() if s.rounds})
    notes = [f"Medians of {' or '.join(map(str, rounds))} interleaved timing rounds (every model in turn), the "
             "fastest and slowest round in brackets."] if rounds else []
    faster = [f"{m} {s.speedup:.1f}x" for m, s in speeds.items() if s.speedup is not None and m != "teacher"]
    if faster:
        notes.append(f"Throughput over the teacher's, from the same rounds: {', '.join(faster)}.")
    for why in dict.fromkeys(why_unsteady(s.unsteady) for s in speeds.values() if s.unsteady):
        notes.append(f"**Unsteady** when measured ({why}): the ratios hold better than the absolute times.")
    return ["", " ".join(notes)] if notes else []


def _usage(onnx: bool, has_int8: bool) -> list[str]:
    if not onnx:
        return ["## How to use", "", "```python", "from transformers import pipeline", "",
                'classify = pipeline("text-classification", model="PATH/TO/student")',
                'print(classify("great kettle, boils fast"))', "```", ""]
    file = "model_quantized.onnx" if has_int8 else "model.onnx"
    dtype = "q8" if has_int8 else "fp32"
    return [
        "## How to use", "",
        "This folder serves every runtime from one copy of the weights: `config.json` and the tokenizer at the "
        f"top, the ONNX files in `onnx/` (`onnx/{file}`), the layout transformers.js reads.", "",
        "With Optimum (it finds the file in `onnx/`):", "", "```python",
        "from optimum.onnxruntime import ORTModelForSequenceClassification",
        "from transformers import AutoTokenizer, pipeline", "",
        f'model = ORTModelForSequenceClassification.from_pretrained("PATH/TO/onnx", file_name="{file}")',
        'tokenizer = AutoTokenizer.from_pretrained("PATH/TO/onnx")',
        'print(pipeline("text-classification", model=model, tokenizer=tokenizer)("great kettle, boils fast"))',
        "```", "",
        "With ONNX Runtime alone (and the tokenizer's files in this folder):", "", "```python",
        "import json, numpy as np, onnxruntime as ort",
        "from tokenizers import Tokenizer", "",
        f'session = ort.InferenceSession("PATH/TO/onnx/onnx/{file}", providers=["CPUExecutionProvider"])',
        'tokenizer = Tokenizer.from_file("PATH/TO/onnx/tokenizer.json")',
        'labels = json.load(open("PATH/TO/onnx/config.json"))["id2label"]',
        'encoding = tokenizer.encode("great kettle, boils fast")',
        'feed = {"input_ids": np.array([encoding.ids]), "attention_mask": np.array([encoding.attention_mask])}',
        'if "token_type_ids" in [i.name for i in session.get_inputs()]:',
        '    feed["token_type_ids"] = np.array([encoding.type_ids])',
        "logits = session.run(None, feed)[0][0]",
        "print(labels[str(int(logits.argmax()))])",
        "```", "",
        "With transformers.js in Node (`npm install @huggingface/transformers`; an ES module such as "
        "`classify.mjs`):", "", "```javascript",
        'import { env, pipeline } from "@huggingface/transformers";', "",
        "env.allowRemoteModels = false;  // this folder only, never the Hub",
        'env.localModelPath = "PATH/TO/";  // the folder that holds this one',
        f'const classify = await pipeline("text-classification", "onnx", {{ dtype: "{dtype}" }});'
        "  // this folder's name",
        'console.log(await classify("great kettle, boils fast", { top_k: null }));',
        "```", "",
        "In the browser, with this folder served at `/models/my-classifier/`:", "", "```html",
        '<script type="module">',
        '  import { env, pipeline } from "https://cdn.jsdelivr.net/npm/@huggingface/transformers@4";',
        "  env.allowRemoteModels = false;",
        '  env.localModelPath = "/models/";',
        f'  const classify = await pipeline("text-classification", "my-classifier", {{ dtype: "{dtype}" }});',
        '  console.log(await classify("great kettle, boils fast", { top_k: null }));',
        "</script>",
        "```", "",
        '`dtype: "q8"` reads `onnx/model_quantized.onnx`, `"fp32"` `onnx/model.onnx`. transformers.js cuts a text '
        "longer than the tokenizer's `model_max_length` without its closing `[SEP]`, so only such texts can get a "
        "slightly different answer than in Python.", ""]


def _limits(figures: RunFigures) -> list[str]:
    domains = figures.manifest.data.get("domains") or []
    held_out = figures.steps.get("fit", {}).get("held_out")
    lines = ["## Limits", "",
             f"- Trained and measured only on the domains {', '.join(f'`{d}`' for d in domains)}"
             + (f" (the teacher never saw `{held_out}`)" if held_out else "")
             + "; other domains or kinds of text were not measured.",
             f"- Texts are cut at {figures.export.get('max_length') or (figures.steps.get('fit', {}).get('config') or {}).get('max_length', '?')} tokens."]
    check = figures.export.get("int8_check") or {}
    invariance = check.get("batch_invariance")
    if invariance:
        mode = check.get("mode", "dynamic")
        why = (" Dynamic int8 computes activation scales over the whole batch, padding included, so a text's "
               "answer can change with the texts batched with it." if mode == "dynamic" else "")
        lines.append(f"- int8 batch behaviour ({mode}): each of {invariance['rows']} dev rows scored alone and in a "
                     f"batch of {invariance['batch_size']}: largest probability difference "
                     f"{invariance['max_abs_prob_diff']:.1e}, {invariance['label_flips']} labels changed.{why}")
    elif check:
        lines.append("- int8 batch behaviour: not measured by this export.")
    target = figures.export.get("target")
    if target:
        lines.append(f"- The int8 file is made for `{target}` CPUs; on a CPU without that instruction set it runs "
                     "slower, and `metakd eval` warns.")
    return [*lines, ""]


def card_text(run, onnx: bool) -> str:
    """The Markdown card of the run's student/ (``onnx`` False) or onnx/ folder."""
    figures = RunFigures(run)
    has_int8 = exported_file(run, "int8").is_file()
    parts = [*_metadata(figures, onnx), *_describe(figures, onnx), *_results(figures), *_usage(onnx, has_int8),
             *_limits(figures),
             f"Written by metakd {__version__} from `metrics/*.json` and `manifest.json` of the run folder; "
             "`metakd distill`, `export` and `eval` rewrite it.", ""]
    return "\n".join(parts)


def write_model_cards(run, log: Callable[[str], None] = lambda _: None) -> list[Path]:
    """(Re)write student/README.md and onnx/README.md for the folders that are current; returns the paths."""
    from metakd_cli.core.run_dir import stale_artifacts

    manifest = run.load()
    stale = stale_artifacts(manifest)
    written = []
    for folder, onnx, step in ((run.student, False, "distill"), (run.onnx, True, "export")):
        if step not in manifest.steps or folder.name in stale or not (folder / "config.json").is_file():
            continue
        path = folder / CARD
        atomic_write_text(path, card_text(run, onnx))
        written.append(path)
    if written:
        log(f"model card{'s' if len(written) > 1 else ''}: {', '.join(str(p) for p in written)}")
    return written
