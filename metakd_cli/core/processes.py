"""Many processes: `fit` and `distill` data-parallel under `accelerate launch` / `torchrun`.

DESIGN.md "Many processes"; docs/usage.md "On GPUs and many processes".

One process per device (GPU, or CPU process on gloo), every one running the same command:

* ``--batch-size`` is the global batch: each of N processes takes every N-th row of the same
  seeded batch (so it must be a multiple of N), and training.run_phase weights each process's
  mean loss by its share of the rows, so the all-reduced gradient is the one-process gradient.
* Passes over a whole split (scores' representations, the teacher-logit cache, dev and test
  metrics) are sharded the same way and gathered back in row order on every process
  (``gather_rows``): each row is computed once, none is dropped or duplicated.
* Only the main process takes the run folder's lock and writes (checkpoints, artifacts,
  metrics, manifest); the others only read what was there before the command started.

The launcher's environment (WORLD_SIZE and RANK, set by torchrun and `accelerate launch`, or MPI's) says
how many processes there are; it is read without importing torch, so `metakd --help` stays fast.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from metakd_cli.core.errors import UserError

MULTI_PROCESS_COMMANDS = ("fit", "distill")
MIXED_PRECISIONS = ("no", "bf16", "fp16")


# what torchrun / accelerate launch set, then MPI's (accelerate launch --mpirun_hostfile), as accelerate reads them
_SIZE = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_RANK = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")


def _first(names: tuple[str, ...], default: int) -> int:
    for name in names:
        if os.environ.get(name):
            try:
                return int(os.environ[name])
            except ValueError:
                from metakd_cli.core.errors import UserError

                raise UserError(f"the launcher's {name}={os.environ[name]!r} is not a whole number") from None
    return default


def world_size() -> int:
    """How many processes run this command (1 without a launcher)."""
    return _first(_SIZE, 1)


def rank() -> int:
    """This process's rank among them (0: the main process)."""
    return _first(_RANK, 0)


def is_main() -> bool:
    return rank() == 0


def check_command(command: str | None) -> None:
    """Refuse, before any work, a command that does not run across processes."""
    n = world_size()
    if n > 1 and command is not None and command not in MULTI_PROCESS_COMMANDS:
        raise UserError(f"`metakd {command}` runs in one process, but this launch started {n}: run only "
                        f"{' and '.join(MULTI_PROCESS_COMMANDS)} under accelerate launch / torchrun, and "
                        f"`metakd {command}` plainly")


def check_settings(batch_size: int, mixed_precision: str | None) -> None:
    """Refuse settings this launch cannot honour, in one line, before any work starts."""
    import torch

    if mixed_precision is not None and mixed_precision not in MIXED_PRECISIONS:
        raise UserError(f"--mixed-precision: unknown value '{mixed_precision}' (choose from "
                        f"{', '.join(MIXED_PRECISIONS)})")
    if mixed_precision == "fp16" and not torch.cuda.is_available():
        raise UserError("--mixed-precision fp16 needs a GPU (accelerate has no fp16 on CPU): give bf16 or no")
    n = world_size()
    if batch_size % n:
        raise UserError(f"--batch-size {batch_size} is the global batch, split evenly across the {n} processes "
                        f"of this launch: give a multiple of {n} (e.g. {max(n, batch_size - batch_size % n)})")


def accelerator(mixed_precision: str | None = None):
    """An Accelerator for this process: its device (a GPU when there is one, else the CPU, gloo across
    processes), ``mixed_precision`` (None: the launcher's setting, else no), and DDP told that some
    trainable parts (a head the loss does not use in a phase) may have no gradient."""
    import torch
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.state import AcceleratorState

    if mixed_precision is None:  # the launcher's setting (accelerate launch exports it), else none
        mixed_precision = os.environ.get("ACCELERATE_MIXED_PRECISION") or "no"
    held = AcceleratorState._shared_state.get("_mixed_precision")
    if held is not None and held != mixed_precision:
        # one process running steps of other precisions (`metakd run`, tests): accelerate refuses a change of
        # its settings, so drop them; the process group (PartialState) is kept
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=mixed_precision,
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def describe(mixed_precision: str | None = None) -> str:
    """One line: where this command trains, with how many processes (starts the process group when launched)."""
    acc = accelerator(mixed_precision)
    n = acc.num_processes
    return (f"device {acc.device}, {n} process{'es' if n > 1 else ''}"
            + (f" ({acc.distributed_type.value.lower()}, each taking 1/{n} of every batch)" if n > 1 else "")
            + f", mixed precision {acc.mixed_precision}")


def device():
    """The device this process computes on."""
    from accelerate import PartialState

    return PartialState().device


def gather_rows(n: int, compute: Callable[[list[int]], "np.ndarray"]) -> "np.ndarray":
    """``compute(rows)`` ([len(rows), ...] for those of rows 0..n-1) over all n rows, in row order, on every process.

    One process: ``compute(list(range(n)))``, as it always was. Several: each computes every
    N-th row and the parts are gathered (accelerate's ``gather_object``, what ``gather_for_metrics``
    uses for objects), so each row is computed exactly once and none is dropped or duplicated.
    """
    import numpy as np

    count = world_size()
    if count == 1:
        return compute(list(range(n)))
    from accelerate.utils import gather_object

    rows = list(range(rank(), n, count))
    part = compute(rows) if rows else None
    pieces = gather_object([(rows, part)])
    shaped = [p for _, p in pieces if p is not None]
    if not shaped:
        return compute([])
    out = np.zeros((n, *shaped[0].shape[1:]), dtype=shaped[0].dtype)
    for piece_rows, piece in pieces:
        if piece is not None:
            out[piece_rows] = piece
    return out


def gather_encoded(encoded: "Encoded", compute: Callable[["Encoded"], "np.ndarray"]) -> "np.ndarray":
    """``compute`` (rows -> [rows, ...], e.g. logits) over every row of ``encoded``, in row order, on every process:
    ``compute(encoded)`` itself in one process, else ``gather_rows`` over this process's share."""
    return gather_rows(len(encoded),
                       lambda rows: compute(encoded if len(rows) == len(encoded) else encoded.subset(rows)))


def wait() -> None:
    """Every process waits here for the others (no-op in one process)."""
    if world_size() > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()
