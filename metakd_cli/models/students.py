"""The students metakd builds, in one place: the presets (`tiny`: a cut of the teacher, or of the packaged
MiniLM-L6 for a teacher bigger than it; `minilm4`; `tinybert4`: the paper's 4L-312 geometry), which layers a cut
keeps, and any other model a user names."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from metakd_cli.core.config import LOGIT_ONLY, DistillConfig
from metakd_cli.core.errors import UserError
from metakd_cli.data.alignment import TokenMap, token_map
from metakd_cli.models.loading import load_classifier, load_tokenizer, resolve_model
from metakd_cli.models.packaged import MINILM, MINILM_HEADS, MINILM_SIZE

PRESETS = ("tiny", "tinybert4", "minilm4")
TINYBERT4 = dict(num_hidden_layers=4, hidden_size=312, num_attention_heads=12, intermediate_size=1200)
SMALL_STUDENT_LAYERS = 4  # every preset's depth


def layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """Teacher layer for each student layer j = 0..L_S (0 = embeddings): round(j * L_T / L_S), and at least 1 for
    j >= 1, so a transformer layer is never mapped to the embeddings (a student over twice the teacher's depth)."""
    return [0] + [max(1, int(j * teacher_layers / student_layers + 0.5)) for j in range(1, student_layers + 1)]


# Which layers a 4-layer cut keeps, by the depth of the model it is cut from, where measured better than the uniform
# map on dev: of 6 (MiniLM-L6), [1, 3, 5, 6] instead of [2, 3, 5, 6], so that the first kept layer reads the
# embeddings it was trained on (docs/results.md has the dev figures). Other depths: the uniform map.
DEFAULT_CUTS = {(4, 6): [1, 3, 5, 6]}


def default_cut(n_layers: int, teacher_layers: int) -> list[int]:
    """The layers (1-based) a cut of ``n_layers`` keeps of ``teacher_layers`` when none are given."""
    n_layers = min(n_layers, teacher_layers)
    return list(DEFAULT_CUTS.get((n_layers, teacher_layers), layer_map(n_layers, teacher_layers)[1:]))


def cut_layers(teacher, n_layers: int, keep: list[int] | None = None):
    """A student made of the teacher's embeddings, the layers ``keep`` names (1-based; None: ``default_cut``),
    and its classifier: (student, the kept layers).

    A teacher of ``n_layers`` or fewer gives all of its layers, each once (the map would pick some twice,
    two student layers sharing one module's weights, which neither trains nor saves as two layers).
    """
    import copy

    total = teacher.config.num_hidden_layers
    if keep is None:
        keep = default_cut(n_layers, total)
    elif keep[-1] > total:
        raise UserError(f"--student-layers {','.join(map(str, keep))}: the model it is cut from has {total} layers")
    n_layers = len(keep)
    config = copy.deepcopy(teacher.config)
    student = copy.deepcopy(teacher)
    encoder = student.base_model.encoder
    encoder.layer = nn.ModuleList([encoder.layer[i - 1] for i in keep])
    student.config.num_hidden_layers = n_layers
    config.num_hidden_layers = n_layers
    return student, keep


def is_bigger_than_minilm(config) -> bool:
    """Whether a teacher is deeper or wider than the packaged MiniLM-L6: then its own 4-layer cut would be
    no small student (MPNet-base's: ~53M), and `tiny` is the MiniLM-4 preset instead."""
    layers, hidden = MINILM_SIZE
    return config.num_hidden_layers > layers or config.hidden_size > hidden


def minilm4_student(labels: list[str], keep: list[int] | None = None):
    """The packaged MiniLM-L6's embeddings and 4 of its layers (``keep``, 1-based; None: models.default_cut) with a
    new head: (model, its folder, the kept layers)."""
    folder = resolve_model(MINILM)
    full = load_classifier(folder, labels, "eager")
    student, kept = cut_layers(full, 4, keep)
    return student, folder, kept


def student_depth(cfg: DistillConfig) -> int:
    """How many layers the student will have, read before it is built (the learning rates depend on it): 4 for
    the presets, else the model's own config (a folder or hub id)."""
    if cfg.student in PRESETS:
        return len(cfg.student_layers) if cfg.student_layers else SMALL_STUDENT_LAYERS
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(resolve_model(cfg.student), trust_remote_code=cfg.trust_remote_code)
    return int(getattr(config, "num_hidden_layers", SMALL_STUDENT_LAYERS + 1))


def build_student(cfg: DistillConfig, teacher, teacher_tokenizer, labels: list[str],
                  warn, base_model: str | None = None) -> "BuiltStudent":
    """The student, a one-line description of how it was initialised, and, for a student whose tokenizer differs
    from the teacher's but whose word pieces align, (its tokenizer, how its ids map to the teacher's).
    ``base_model``: what the teacher was fine-tuned from (a `tiny` of --method none is cut from it)."""
    student_name = cfg.student
    if cfg.student == "tiny" and is_bigger_than_minilm(teacher.config):
        student_name = minilm4_or_cut(cfg, teacher, teacher_tokenizer, warn)
    if student_name == "minilm4":
        student, folder, kept = minilm4_student(labels, cfg.student_layers)
        student_tokenizer = load_tokenizer(folder)
        how = (f"minilm4: the packaged all-MiniLM-L6-v2's embeddings and layers {kept} (4 x 384) with a new head"
               + (f" (tiny with a {teacher.config.num_hidden_layers} x {teacher.config.hidden_size} teacher, bigger "
                  "than MiniLM-L6)" if cfg.student == "tiny" else ""))
        if student_tokenizer.get_vocab() == teacher_tokenizer.get_vocab():
            return BuiltStudent(student, how, kept_layers=kept)
        return BuiltStudent(student, how, (student_tokenizer, token_map(student_tokenizer, teacher_tokenizer, MINILM)),
                            kept_layers=kept)
    if cfg.student == "tiny":
        if cfg.method == "none":  # no teacher: cut from the untouched pretrained encoder, with a new head
            base = resolve_model(base_model or teacher.name_or_path)
            student, kept = cut_layers(load_classifier(base, labels, "eager", cfg.trust_remote_code), 4,
                                       cfg.student_layers)
            how = f"tiny: the pretrained {base}'s embeddings and layers {kept} with a new head (no teacher)"
            from_teacher = None
        else:
            student, kept = cut_layers(teacher, 4, cfg.student_layers)
            how = f"tiny: the teacher's embeddings, layers {kept} and classifier"
            from_teacher = kept
        if len(kept) == teacher.config.num_hidden_layers:
            warn(f"tiny: the teacher has only {len(kept)} layers, so the student keeps all of them and is no "
                 "smaller than its teacher; use a deeper teacher, or --student tinybert4 for a smaller one")
        return BuiltStudent(student, how, teacher_layers=from_teacher, kept_layers=kept)
    if cfg.student == "tinybert4":
        if cfg.student_init is None:
            raise UserError(
                "--student tinybert4 needs --student-init: a general-distilled 4L-312 checkpoint (folder or hub id, "
                "e.g. huawei-noah/TinyBERT_General_4L_312D online) or `random`"
            )
        if cfg.student_init == "random":
            from transformers import BertConfig, BertForSequenceClassification

            warn(
                "tinybert4 from random weights: a student without general distillation is much weaker; "
                "prefer --student-init with a general-distilled checkpoint"
            )
            config = BertConfig(
                vocab_size=teacher.config.vocab_size,
                max_position_embeddings=teacher.config.max_position_embeddings,
                type_vocab_size=teacher.config.type_vocab_size,
                num_labels=len(labels),
                id2label=dict(enumerate(labels)),
                label2id={label: i for i, label in enumerate(labels)},
                attn_implementation="eager",
                **TINYBERT4,
            )
            torch.manual_seed(cfg.seed)
            return BuiltStudent(BertForSequenceClassification(config), "tinybert4 (4L-312) from random weights")
        name = resolve_model(cfg.student_init)
    else:
        name = resolve_model(cfg.student)
    student_tokenizer = load_tokenizer(name, cfg.trust_remote_code)
    cross = None
    if student_tokenizer.get_vocab() != teacher_tokenizer.get_vocab():  # refused unless the word pieces align
        cross = (student_tokenizer, token_map(student_tokenizer, teacher_tokenizer, name))
    student = load_classifier(name, labels, "eager", cfg.trust_remote_code)
    return BuiltStudent(student, f"{cfg.student} from {name}", cross)


@dataclass
class BuiltStudent:
    """What build_student made: the model, how (one line), its own tokenizer and token map when they differ from
    the teacher's, for a cut of this teacher, the teacher layers it kept (stage 1 maps each to its source), and for
    any cut the layers it kept of the model it was cut from (1-based; the manifest records them)."""

    model: nn.Module
    how: str
    own_tokens: "tuple[object, TokenMap] | None" = None
    teacher_layers: list[int] | None = None
    kept_layers: list[int] | None = None


def minilm4_or_cut(cfg: DistillConfig, teacher, teacher_tokenizer, warn) -> str:
    """What `tiny` is for a teacher bigger than MiniLM-L6: ``minilm4`` (~19M) when the packaged MiniLM is
    installed, its word pieces align with the teacher's and, for a method that distils attention scores (compared
    head by head), the teacher has MiniLM's 12 heads; else the teacher's own 4-layer cut, said loudly."""
    size = teacher.config.num_hidden_layers, teacher.config.hidden_size
    heads = teacher.config.num_attention_heads
    if cfg.method not in LOGIT_ONLY and cfg.intermediate_epochs != 0 and heads != MINILM_HEADS:
        # minilm4 would be refused by check_attention_heads, where the cut keeps the teacher's own heads
        warn(f"tiny: the teacher ({size[0]} x {size[1]}) is bigger than MiniLM-L6, but it has {heads} attention "
             f"heads and the ~19M minilm4 student {MINILM_HEADS}, which --method {cfg.method} compares head by head; "
             "tiny is the teacher's own 4-layer cut, at its width (--method kd or --intermediate-epochs 0 would "
             "take minilm4)")
        return "tiny"
    try:
        folder = resolve_model(MINILM)
        minilm_tokenizer = load_tokenizer(folder)
        if minilm_tokenizer.get_vocab() != teacher_tokenizer.get_vocab():
            token_map(minilm_tokenizer, teacher_tokenizer, MINILM)
        return "minilm4"
    except UserError as exc:
        warn(f"tiny: the teacher ({size[0]} x {size[1]}) is bigger than MiniLM-L6, but the ~19M minilm4 student "
             f"cannot be used ({str(exc).split(':')[0]}); tiny is the teacher's own 4-layer cut, at its width")
        return "tiny"
