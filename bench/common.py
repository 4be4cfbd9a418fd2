"""What the bench scripts share: paths, running one metakd command, fresh student run folders."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "amazon-mds"
RUNS = ROOT / "bench" / "runs"
RESULTS = ROOT / "bench" / "results"
DOMAINS = ["books", "dvd", "electronics", "kitchen"]
TEACHER_SETTINGS = {"epochs": 2, "lr": 5e-5, "max_length": 128, "seed": 42}  # bench/teachers.py's defaults
PAPER = {  # system -> the paper's row: DESIGN.md "Reference figures" (the authors' slides, BERT-base teacher,
    # TinyBERT-4 student; books, dvd, electronics, kitchen, average)
    "teacher-single": ("BERT-single", [87.9, 83.8, 89.2, 90.6, 87.9]),
    "teacher-mix": ("BERT-mix", [89.9, 85.9, 90.1, 92.1, 89.5]),
    "teacher-mtl": ("BERT-mtl", [90.5, 86.5, 91.1, 91.1, 89.8]),
    "teacher-meta": ("Meta-teacher", [92.5, 87.0, 91.1, 89.2, 89.9]),
    "single->tinybert": ("single -> TinyBERT-KD", [83.4, 83.2, 89.2, 91.1, 86.7]),
    "mix->tinybert": ("mix -> TinyBERT-KD", [88.4, 81.6, 89.7, 89.7, 87.3]),
    "mtl->tinybert": ("mtl -> TinyBERT-KD", [90.5, 81.6, 88.7, 90.1, 87.7]),
    "multi->mtn": ("Multi-teachers -> MTN-KD", [83.9, 78.4, 88.7, 87.7, 84.7]),
    "meta->tinybert": ("Meta-teacher -> TinyBERT-KD", [89.9, 84.3, 87.3, 91.6, 88.3]),
    "meta->meta": ("Meta-teacher -> Meta-distillation", [91.5, 86.5, 90.1, 89.7, 89.4]),
}
PAPER_HELD_OUT = {  # MNLI, fiction held out, tested on fiction (DESIGN.md Reference figures)
    "in-domain teacher": 82.2, "meta-teacher without H": 81.6, "in-domain teacher -> tinybert": 78.8,
    "other domains' teachers -> tinybert": "74.1 to 77.1", "meta-teacher without H -> tinybert": 78.2,
}


def fit_flags(settings: dict) -> list[str]:
    """`metakd fit` flags for {"epochs": 2, "lr": 5e-5, ...}."""
    return [x for k, v in settings.items() for x in (f"--{k.replace('_', '-')}", f"{v:g}")]


TEACHER_FIT_FLAGS = fit_flags(TEACHER_SETTINGS)
NO_DATA = f"skipped: {DATA} not present (the Amazon multi-domain data is not on this machine)"


def metakd(run_dir: Path, *args: str, dry_run: bool = False, check: bool = True) -> tuple[int, float]:
    """Run `metakd --quiet --run-dir RUN_DIR ARGS...` in a child process; (exit status, wall seconds).
    Prints the command; with ``dry_run`` runs nothing."""
    command = [sys.executable, "-m", "metakd_cli", "--quiet", "--run-dir", str(run_dir), *args]
    print("$ metakd " + " ".join(command[3:]), flush=True)
    if dry_run:
        return 0, 0.0
    started = time.time()
    status = subprocess.run(command, check=check, stdout=subprocess.DEVNULL).returncode
    return status, time.time() - started


def link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)  # distill only reads teacher/; fit replaces folders whole, never files in place
    except OSError:
        shutil.copy2(source, target)


def fresh_student_run(teacher_run: Path, run_dir: Path) -> None:
    """An empty run folder holding ``teacher_run``'s teacher/ (hard links) and manifest, for one distill."""
    if not (teacher_run / "teacher").is_dir():
        raise SystemExit(f"{teacher_run}/teacher missing: the teacher fit did not finish")
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    shutil.copytree(teacher_run / "teacher", run_dir / "teacher", copy_function=link_or_copy)
    shutil.copy(teacher_run / "manifest.json", run_dir / "manifest.json")


def linked_student_run(student_run: Path, run_dir: Path) -> None:
    """A run folder for another export of ``student_run``'s student: its student/ as hard links (export only reads
    it), copies of its manifest and distill metrics, no onnx/ yet."""
    shutil.rmtree(run_dir, ignore_errors=True)
    (run_dir / "metrics").mkdir(parents=True)
    shutil.copytree(student_run / "student", run_dir / "student", copy_function=link_or_copy)
    shutil.copy(student_run / "manifest.json", run_dir / "manifest.json")
    shutil.copy(student_run / "metrics" / "distill.json", run_dir / "metrics" / "distill.json")


def test_correctness(run_dir: Path, model: str, domains: list[str], dataset, folder: Path | None = None
                     ) -> dict[str, list[int]]:
    """0/1 correctness of one model of ``run_dir`` (teacher, student, ...) on each domain's test rows of
    ``dataset``, in the dataset's order, scored in this process. ``folder`` holds an int8 model outside onnx/."""
    import json

    import numpy as np

    from metakd_cli.data import encode
    from metakd_cli.evaluate import Artifact, load_forward, run_artifacts
    from metakd_cli.inference import INT8_FILE, batched_logits
    from metakd_cli.models import load_tokenizer
    from metakd_cli.run_dir import RunDir

    if folder is not None:  # onnx/ or onnx.failed/
        max_length = json.loads((folder / "metakd_export.json").read_text())["max_length"]
        artifact = Artifact(model, "onnx", folder / INT8_FILE, folder, int(max_length))
    else:
        artifact = run_artifacts(RunDir(run_dir)).get(model)
    if artifact is None:
        raise SystemExit(f"{run_dir}: no {model} model to score")
    tokenizer = load_tokenizer(str(artifact.tokenizer_dir))
    pad_id = tokenizer.pad_token_id or 0
    forward = load_forward(artifact) if artifact.per_domain is None else None
    correct: dict[str, list[int]] = {}
    for domain in domains:
        if artifact.per_domain is not None:  # single-mode teacher: each domain's rows by its own teacher
            forward = load_forward(artifact, artifact.per_domain[domain])
        encoded = encode(dataset.select("test", [domain]), dataset, tokenizer, artifact.max_length)
        predictions = batched_logits(encoded, pad_id, 64, forward).argmax(-1)
        correct[domain] = (predictions == np.asarray(encoded.labels)).astype(int).tolist()
    return correct


def slug(name: str) -> str:
    return name.replace("->", "-to-").replace(">", "").replace("/", "-")


def cell(value, spread=None) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    return f"{value:.1f}" if spread is None else f"{value:.1f}±{spread:.1f}"


def student_finished(run_dir: Path, teacher_run: Path, wanted: dict) -> bool:
    """A finished `distill` in ``run_dir`` whose recorded config has the ``wanted`` values, distilled
    from ``teacher_run``'s current fit (a re-fitted teacher makes its students stale)."""
    import json

    path = run_dir / "metrics" / "distill.json"
    if not (path.is_file() and (run_dir / "student" / "config.json").is_file()):
        return False
    config = json.loads(path.read_text()).get("config", {})
    if any(config.get(k) != v for k, v in wanted.items()):
        return False
    fitted = [json.loads((r / "manifest.json").read_text()).get("steps", {}).get("fit", {}).get("finished")
              for r in (run_dir, teacher_run)]
    return fitted[0] is not None and fitted[0] == fitted[1]
