"""transfer's hooks: the unlabelled texts a user with a fifth of their rows labelled hands --transfer, and the speed
at which each fitted teacher labels them, by PyTorch and by its fp32 ONNX export."""

from __future__ import annotations

import json
import time
from pathlib import Path

from bench.common import data_path, recipe, shown
from bench.suite import Suite, load

UNLABELLED = "unlabelled-80.jsonl"  # what the suite's s20-transfer systems give --transfer, under its runs


def write_unlabelled(suite: Suite) -> Path:
    """The training texts outside the seeded labelled fraction (the rows `--train-fraction` leaves out), labels
    dropped, as a JSON-lines table with a domain column, under the suite's runs."""
    from metakd_cli.data.dataset import fraction_indices, load_dataset

    config = recipe([], suite.recipe)
    config.data.path = str(data_path(config))
    dataset = load_dataset(config.data)
    labelled = set(fraction_indices(dataset.train, suite.spec["setup"]["labelled_fraction"], dataset.split_seed))
    rows = [{"text": ex.text, "domain": ex.domain} for i, ex in enumerate(dataset.train) if i not in labelled]
    path = suite.runs / UNLABELLED
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    partial.replace(path)
    return path


def label_speed(suite: Suite, extra: tuple[str, ...] = (), rows: int = 512, rounds: int = 3) -> dict:
    """{"label_speed": rows a second at which each fitted teacher (keep's MiniLM-L6, mpnet's MPNet-base) labels the
    first ``rows`` unlabelled texts, by PyTorch and by its fp32 ONNX export (metakd_cli.ship.onnx_teacher), timed in
    interleaved rounds after an untimed one (medians), the export's own seconds beside}. Stop other work first."""
    from metakd_cli.core.timing import Spread, time_rounds
    from metakd_cli.data.encode import Encoded
    from metakd_cli.models.inference import torch_logits
    from metakd_cli.models.loading import load_classifier, load_tokenizer
    from metakd_cli.ship.onnx_teacher import OnnxTeacher

    texts = [json.loads(line)["text"] for line in write_unlabelled(suite).read_text(encoding="utf-8").splitlines()[:rows]]
    teachers = {"MiniLM-L6 (bench.keep's teacher)": load("keep").folder("teacher") / "teacher",
                "MPNet-base (bench.mpnet's teacher-meta)": load("mpnet").folder("teacher-meta") / "teacher"}
    figures = {}
    for name, folder in teachers.items():
        if not (folder / "config.json").is_file():
            figures[name] = "not measured: no fitted teacher in " + shown(folder)
            continue
        tokenizer = load_tokenizer(str(folder))
        ids = tokenizer(texts, truncation=True, max_length=128)
        encoded = Encoded(ids["input_ids"], ids.get("token_type_ids"), [0] * len(texts), [0] * len(texts))
        pad_id, model = tokenizer.pad_token_id or 0, load_classifier(str(folder), None, "eager")
        started = time.perf_counter()
        onnx = OnnxTeacher(folder, suite.runs / "scratch")
        export_seconds = time.perf_counter() - started
        try:
            seconds = time_rounds({"torch": lambda: torch_logits(model, encoded, pad_id),
                                   "onnx": lambda: onnx.logits(encoded, pad_id)}, rounds)
        finally:
            onnx.close()
        speed = {how: round(len(texts) / Spread.of(values).median, 1) for how, values in seconds.items()}
        figures[name] = {"rows": len(texts), "rounds": rounds, "rows_per_s": speed,
                         "onnx_over_torch": round(speed["onnx"] / speed["torch"], 2),
                         "export_seconds": round(export_seconds, 1)}
        print(f"{name}: torch {speed['torch']} rows/s, onnx {speed['onnx']} rows/s "
              f"({figures[name]['onnx_over_torch']}x), export {export_seconds:.0f} s")
    return {"label_speed": figures}
