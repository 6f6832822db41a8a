"""Run `convae train` and kill this process with SIGKILL at a given moment (for tests): what a
crash, an OOM killer or a pulled plug leaves behind.

Usage: python kill_at.py step N -- <convae train arguments>   (SIGKILL at training step N)
       python kill_at.py finish 0 -- <convae train arguments>  (SIGKILL in the final evaluation)
"""

import os
import signal
import sys

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
else:
    trainer_module.Trainer.finish = lambda self: die()
sys.exit(main(sys.argv[4:]))
