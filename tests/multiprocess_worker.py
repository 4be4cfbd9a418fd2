"""Run `metakd` as one process of a multi-process launch, and save what each phase trained in this process.

    python -m torch.distributed.run --nproc_per_node 2 tests/multiprocess_worker.py OUT -- [metakd args]

After every training phase (training.run_phase) the module's state, as the phase leaves it (its best state on
dev), goes to OUT/<phase>-rank<rank>.safetensors, and the state after its last step to
OUT/<phase>-last-rank<rank>.safetensors, so a test can check that every process ends with the same weights (the
last state is the one every step moved: a best state kept after the first step hides what later steps did);
each save of a run folder's manifest adds the saving process's rank to OUT/manifest-saves.txt.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository's metakd_cli


def main() -> None:
    out, args = Path(sys.argv[1]), sys.argv[3:]
    out.mkdir(parents=True, exist_ok=True)
    import metakd_cli.training.loop as training
    from safetensors.torch import save_file

    phase = training.run_phase

    def recorded(spec, module, *rest, **kwargs):
        result = phase(spec, module, *rest, **kwargs)
        state = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
        save_file(state, str(out / f"{spec.name}-rank{os.environ.get('RANK', '0')}.safetensors"))
        return result

    training.run_phase = recorded
    end_epoch = training._end_epoch

    def recorded_end(phase, state, *rest):  # after each epoch, before run_phase loads the best state
        module = phase.module
        last = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
        save_file(last, str(out / f"{phase.spec.name}-last-rank{os.environ.get('RANK', '0')}.safetensors"))
        return end_epoch(phase, state, *rest)

    training._end_epoch = recorded_end
    from metakd_cli.core.run_dir import RunDir

    save = RunDir.save

    def logged_save(self, manifest):  # which process saves the manifest, one line per save
        with open(out / "manifest-saves.txt", "a", encoding="utf-8") as log:
            log.write(os.environ.get("RANK", "0") + "\n")
        return save(self, manifest)

    RunDir.save = logged_save
    for name in ("metakd_cli.steps.fit", "metakd_cli.steps.distill"):  # they imported run_phase by name
        __import__(name)
        sys.modules[name].run_phase = recorded
    from metakd_cli.cli import cli

    sys.argv = ["metakd", *args]
    cli(prog_name="metakd")


if __name__ == "__main__":
    main()
