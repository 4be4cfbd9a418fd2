"""Config dataclasses for every step, YAML recipes, and the override precedence.

Precedence, lowest to highest: dataclass defaults < recipe file < command-line flags
< repeatable ``--set section.key=value``. Unknown keys and wrong types are user errors
naming the file and key.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

from metakd_cli.core.errors import UserError

DEFAULT_TEACHER = "all-MiniLM-L6-v2"


@dataclass
class DataConfig:
    """Where the data is and how it is read and split."""

    path: str = ""
    text_column: str = "text"
    text_pair_column: str = "text_pair"
    label_column: str = "label"
    domain_column: str = "domain"
    split_seed: int = 42
    dev_fraction: float = 0.1
    test_fraction: float = 0.1
    limit_per_domain: int | None = None
    domains: list[str] | None = None  # keep only these domains (e.g. MNLI's five training genres); None: all


@dataclass
class FitConfig:
    """`metakd fit`: the meta-teacher and its single / mix / mtl baselines."""

    teacher: str = DEFAULT_TEACHER
    teacher_mode: str = "meta"  # meta | mix | mtl | single
    hold_out: str | None = None  # a domain the teacher never sees (distil to it later with distill --domain)
    train_fraction: float = 1.0  # seeded, label-stratified fraction of each domain's training rows
    fraction_domains: list[str] | None = None  # apply train_fraction to these domains only; None: every domain
    prototypes: str = "class"  # class (the paper) | domain (the official code)
    pooling: str = "mean"  # mean | cls: the representation scores are computed from
    domain_loss: str = "confusion"  # confusion (official) | reversal (DANN) | none
    alpha: float = 0.5
    zeta: float = 0.5
    gamma: float = 0.5
    # the length: exactly `epochs` when given; None: chosen on dev, scored every `eval_every` steps (None: about
    # ten times an epoch; 0: at epoch ends), stopping after `patience` scorings without a gain, at most `max_epochs`
    epochs: int | None = None
    max_epochs: int = 3
    patience: int = 10
    eval_every: int | None = None
    batch_size: int = 32
    lr: float | None = None  # None: by the teacher's width (metakd_cli.steps.fit.teacher_lr)
    warmup: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    max_length: int = 128
    seed: int = 42
    trust_remote_code: bool = False
    mixed_precision: str | None = None  # no | bf16 | fp16 (GPU only); None: the launcher's setting, else no


METHODS = ("meta", "tinybert", "kd", "mtn", "none")  # DistillConfig.method
LOGIT_ONLY = ("kd", "mtn", "none")  # methods without the intermediate stage


@dataclass
class DistillConfig:
    """`metakd distill`: meta-distillation and the TinyBERT-KD / KD / MTN-KD baselines."""

    student: str = "tiny"  # tiny | minilm4 | tinybert4 | a model folder or hub id
    student_init: str | None = None  # for tinybert4: a folder, hub id, or "random"
    method: str = "meta"  # meta | tinybert | kd | mtn | none (no teacher: the student on gold labels alone)
    # which teacher (tiny) or MiniLM-L6 (minilm4) layers a cut student keeps, 1-based; None: the default cut
    # (metakd_cli.models.loading.default_cut)
    student_layers: list[int] | None = None
    domain: str | None = None
    teacher_domain: str | None = None  # single-mode teachers: whose teacher to distil (default: domain's)
    train_fraction: float = 1.0  # seeded, label-stratified fraction of the training rows distilled on
    # stage 1's length: exactly `intermediate_epochs` when given (0: no stage 1); None: chosen on dev (a student
    # whose head came from the teacher is scored by dev accuracy, with stage 2's patience and eval_every), at most
    # `intermediate_max_epochs`; a new head says nothing on dev before stage 2, so that student runs the ceiling
    intermediate_epochs: int | None = None
    intermediate_max_epochs: int = 3
    # stage 2's length: exactly `epochs` when given; None: chosen on dev, scored every `eval_every` steps (None:
    # about ten times an epoch; 0: at epoch ends), stopping after `patience` scorings without a gain, at most
    # `max_epochs` epochs. The state that scored best on dev is kept either way
    epochs: int | None = None
    max_epochs: int = 10
    patience: int = 10
    eval_every: int | None = None
    temperature: float = 1.0
    gold_weight: float = 0.0  # stage 2's gold-label cross-entropy weight beside the (T^2-scaled) soft term
    # epochs of head warm-up before stage 2 (metakd_cli.training.head_warmup): the pooler and classifier trained alone on the
    # frozen body's [CLS] states, the best epoch on dev kept; None: 10 for a head that did not come from the
    # teacher (minilm4, the no-teacher cut), 0 for one that did; 0: none
    head_warmup: int | None = None
    # derived rows per training row that the teacher labels for stage 2 (metakd_cli.data.augment: windows of long texts,
    # masking, deletion, swap, span sampling, same-domain word replacement); 0: none
    augment: int = 0
    # the user's unlabelled in-domain texts the teacher labels for stage 2 (metakd_cli.data.transfer): tables with a
    # domain column, or folders with one file per domain
    transfer: list[str] | None = None
    # what labels the transfer set: auto (the teacher's fp32 ONNX export on a CPU for 2,048 rows or more, checked
    # against PyTorch on the first rows; metakd_cli.ship.onnx_teacher), torch, or onnx
    label_with: str = "auto"
    transfer_stage1: bool = False  # stage 1 over the transfer set too (default: the labelled training rows only)
    batch_size: int = 32
    lr: float | None = None  # stage 2; None: by the student (metakd_cli.steps.distill.learning_rates)
    intermediate_lr: float | None = None  # stage 1, constant; None: 5e-5, or 5e-4 from random weights
    gamma: float = 0.5
    # ablations of stage 1: lambda_weights false gives every row weight 1 (meta keeps its domain-feature term);
    # attention_weight scales the attention-score term (0: hidden states, and domain features, only)
    lambda_weights: bool = True
    # None: 1, or 0 across position-encoding types (a relative-position teacher such as MPNet and an absolute-position
    # student: the teacher's scores carry a position bias the student cannot reproduce)
    attention_weight: float | None = None
    max_length: int | None = None  # default: the teacher's
    seed: int = 42
    trust_remote_code: bool = False
    trim_vocab: bool = False  # save the student with only the word pieces its training texts use
    keep_top: int = 0  # with trim_vocab, also keep this many other pieces (by vocabulary rank)
    mixed_precision: str | None = None  # no | bf16 | fp16 (GPU only); None: the launcher's setting, else no


DEFAULT_OPSET = 18  # optimum's minimum recommended opset for BERT; ORT Mobile 1.15+ runs it


@dataclass
class ExportConfig:
    """`metakd export`: what to export and how to check it."""

    model: str = "student"  # student | teacher
    int8: bool = False
    target: str = "auto"  # auto | avx2 | avx512_vnni | arm64: the int8 format
    ort: bool = False  # also write model.ort for ONNX Runtime Mobile
    opset: int = DEFAULT_OPSET
    max_drop: float = 1.0  # accuracy points int8 may lose against fp32 ONNX on dev (average over domains)
    # static: activation scales fixed by calibration on training texts, so a text gets one answer whatever its
    # batch; dynamic: scales computed per batch, padding included (answers move with the neighbours)
    # None: static, or dynamic with `fuse` (the fused attention, QAttention, exists in dynamic int8 only)
    int8_mode: str | None = None  # static | dynamic
    # static int8 activation ranges: minmax | percentile | entropy. percentile (99.999th of |x|) kept the best dev
    # accuracy of the static variants on a small Amazon run's teacher and student (bench/int8_static.py)
    calibration: str = "percentile"
    calibration_rows: int = 256  # seeded sample of training texts, fed one at a time (no padding in the ranges)
    static_format: str = "qdq"  # static int8 graph: qdq (QuantizeLinear/DequantizeLinear pairs) | qoperator
    atol: float = 1e-4  # max |fp32 ONNX logit - PyTorch logit|
    check_rows: int = 64  # dev rows for the logits check
    per_channel: bool = True  # int8 weight scale per output column; per matrix lost the same on Amazon dev rows
    fuse: bool = False  # int8 from a graph with fused attention / layer norm / GELU (ORTOptimizer O2)
    trim_vocab: bool = False  # keep only the word pieces the training corpus uses: most of a small student's size
    keep_top: int = 0  # with trim_vocab, also keep this many other pieces (by vocabulary rank) for unseen words

    @property
    def int8_kind(self) -> str:
        """The int8 mode export makes: ``int8_mode`` when set, else dynamic with ``fuse`` and static without."""
        return self.int8_mode or ("dynamic" if self.fuse else "static")


@dataclass
class EvalConfig:
    """`metakd eval`: which artifacts, which domains, which split, how much to time."""

    models: list[str] = field(default_factory=lambda: ["all"])  # all | teacher | student | onnx | int8
    domains: list[str] | None = None  # None: every domain
    split: str = "test"
    latency_rows: int = 64  # rows timed one by one (batch 1), split over the rounds
    throughput_batches: int = 8  # batches of `batch_size` timed for throughput, split over the rounds
    batch_size: int = 32
    rounds: int = 8  # interleaved timing rounds (every model in turn); figures are medians over them
    bucketing: bool = True  # length-sorted, dynamically padded batches (else input order, padded to max_length)


@dataclass
class Recipe:
    data: DataConfig = field(default_factory=DataConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


SECTIONS = {f.name: f.type for f in fields(Recipe)}


def _coerce(value: object, annotation: object, where: str) -> object:
    """Check/convert one recipe or --set value against a dataclass field's type."""
    hint = annotation
    if isinstance(hint, str):
        namespace = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "None": None}
        hint = eval(hint, namespace)  # noqa: S307 - our own dataclass annotations, never user text
    options = [hint]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        options = list(typing.get_args(hint))
    if value is None:
        if type(None) in options:
            return None
        raise UserError(f"{where}: a value is required")
    for option in options:
        if typing.get_origin(option) is list:
            items = value.split(",") if isinstance(value, str) else value
            if isinstance(items, list):
                (item_type,) = typing.get_args(option)
                return [_coerce(item, item_type, where) for item in items]
        elif option is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in {"true", "false", "yes", "no", "1", "0"}:
                return value.lower() in {"true", "yes", "1"}
        elif option is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, str):
                try:
                    return int(value)
                except ValueError:
                    pass
        elif option is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
        elif option is str:
            if isinstance(value, (str, int, float)) and not isinstance(value, bool):
                return str(value)
    names = " or ".join(getattr(o, "__name__", str(o)) for o in options if o is not type(None))
    raise UserError(f"{where}: expected {names}, got {value!r}")


def apply_values(config: object, values: dict, where: str) -> None:
    """Set dataclass fields from ``values``; unknown keys and wrong types are user errors."""
    known = {f.name: f for f in fields(config)}
    for key, value in values.items():
        if key not in known:
            valid = ", ".join(sorted(known))
            raise UserError(f"{where}: unknown key '{key}' (valid keys: {valid})")
        setattr(config, key, _coerce(value, known[key].type, f"{where}: key '{key}'"))


PACKAGE_DIR = Path(__file__).resolve().parent.parent  # metakd_cli/


def bundled(kind: str, name: str = "") -> Path:
    """A folder shipped with metakd (``recipes`` or ``examples``): inside the installed
    package (wheel), or at the repository root (editable install)."""
    for base in (PACKAGE_DIR / kind, PACKAGE_DIR.parent / kind):
        if base.is_dir():
            return base / name if name else base
    raise UserError(f"the bundled {kind}/ folder is missing from this metakd installation")


def resolve_data_path(path: str) -> str:
    """``@examples/NAME`` names a dataset bundled with metakd; other paths are used as given."""
    if path.startswith("@examples/"):
        return str(bundled("examples", path.removeprefix("@examples/")))
    return path


def find_recipe(name: str) -> Path:
    """A recipe file path, or the name of a bundled recipe (``quickstart``, ``amazon-cpu`` ...)."""
    path = Path(name)
    if path.is_file():
        return path
    candidate = bundled("recipes", f"{name.removesuffix('.yaml')}.yaml")
    if candidate.is_file():
        return candidate
    known = ", ".join(sorted(p.stem for p in bundled("recipes").glob("*.yaml")))
    raise UserError(f"no recipe file or bundled recipe named '{name}' (bundled: {known})")


def load_recipe(path: Path | str | None) -> Recipe:
    """Read a YAML recipe (sections data / fit / distill ...) into config dataclasses."""
    recipe = Recipe()
    if path is None:
        return recipe
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"recipe {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid YAML{_yaml_where(exc)}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a recipe is a mapping of sections ({', '.join(SECTIONS)})")
    for section, values in raw.items():
        if section not in SECTIONS:
            raise UserError(f"{path}: unknown section '{section}' (valid: {', '.join(SECTIONS)})")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise UserError(f"{path}: section '{section}' must be a mapping of keys to values")
        apply_values(getattr(recipe, section), values, f"{path} [{section}]")
    return recipe


def _yaml_where(exc: Exception) -> str:
    """Where a YAML error is, as " at line L, column C (what is wrong)": yaml counts from 0, people from 1."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if mark is None:
        return f" ({what})"
    return f" at line {mark.line + 1}, column {mark.column + 1} ({what})"


def apply_overrides(recipe: Recipe, section: str, flags: dict, sets: tuple[str, ...] = ()) -> None:
    """Apply one command's flags to its ``section`` (None = not given), then ``--set section.key=value`` items."""
    given = {k: v for k, v in flags.items() if v is not None}
    apply_values(getattr(recipe, section), given, "command line")
    apply_sets(recipe, sets)


def apply_sets(recipe: Recipe, sets: tuple[str, ...]) -> None:
    """Apply ``--set section.key=value`` items, in order (a later one wins)."""
    for item in sets:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise UserError(f"--set {item!r}: expected section.key=value, e.g. distill.temperature=2")
        dotted, value = item.split("=", 1)
        sect, key = dotted.split(".", 1)
        if sect not in SECTIONS:
            raise UserError(f"--set {item!r}: unknown section '{sect}' (valid: {', '.join(SECTIONS)})")
        target = getattr(recipe, sect)
        if value.lower() in {"none", "null"} and not _plain_text(target, key):  # the word: domain_loss=none
            value = None
        apply_values(target, {key: value}, f"--set {dotted}")


def _plain_text(config: object, key: str) -> bool:
    """Whether ``key`` of a config dataclass is a plain ``str`` that cannot be empty: there ``--set ...=none``
    is the word "none" (``fit.domain_loss=none``), where it clears an optional key (``fit.hold_out=none``)."""
    return any(f.name == key and f.type in ("str", str) for f in fields(config))


def choice(value: str, valid: typing.Iterable[str], what: str) -> str:
    """Validate a name from a small registry, listing the valid ones when wrong."""
    valid = list(valid)
    if value not in valid:
        raise UserError(f"unknown {what} '{value}' (valid: {', '.join(valid)})")
    return value


def summary(config: object) -> str:
    """The settings that differ from the defaults, as ``key=value`` (``section.key=value`` for a whole
    Recipe), for the one log line a command prints at start; the full config goes to the manifest."""
    if isinstance(config, Recipe):
        parts = [f"{name}.{item}" for name in SECTIONS for item in _changed(getattr(config, name))]
    else:
        parts = _changed(config)
    return " ".join(parts) + ", the rest default" if parts else "all defaults"


def _changed(config: object) -> list[str]:
    defaults = type(config)()
    return [f"{f.name}={_shown(getattr(config, f.name))}" for f in fields(config)
            if getattr(config, f.name) != getattr(defaults, f.name)]


def _shown(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_shown(v) for v in value)
    if value is None:
        return "none"
    return str(value)
