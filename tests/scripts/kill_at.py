"""Run `convae train` and kill this process with SIGKILL at a given moment (for tests): what a
crash, an OOM killer or a pulled plug leaves behind.

Usage: python kill_at.py step N -- <convae train arguments>        (SIGKILL at training step N)
       python kill_at.py finish 0 -- <convae train arguments>       (SIGKILL in the final evaluation)
       python kill_at.py write:NAME N -- <convae train arguments>   (SIGKILL while the Nth write of the
                                                                     run file NAME is in its temporary
                                                                     file, before it is renamed into place)
"""

import os
import signal
import sys

import convae.checkpoint as checkpoint_module
import convae.training.trainer as trainer_module
from convae.cli import main

moment, at = sys.argv[1], int(sys.argv[2])


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


if moment == "step":
    original_fit = trainer_module.Trainer.fit

    def fit(self, on_step=None):
        return original_fit(self, lambda step: die() if step == at else None)

    trainer_module.Trainer.fit = fit
elif moment.startswith("write:"):
    name, seen = moment.removeprefix("write:"), [0]
    original_write = checkpoint_module.atomic_write

    def atomic_write(path, write):
        def then_die(f):
            write(f)
            if os.path.basename(path) == name:
                seen[0] += 1
                if seen[0] == at:
                    f.flush()
                    die()

        original_write(path, then_die)

    checkpoint_module.atomic_write = atomic_write
else:
    trainer_module.Trainer.finish = lambda self: die()
sys.exit(main(sys.argv[4:]))
