"""Run `convae train` under torchrun, with one rank failing at a given step (for tests).

Usage: torchrun ... fail_on_rank.py RANK STEP -- <convae train arguments>
"""

import os
import sys

import convae.training.trainer as train_module
from convae.cli import main
from convae.errors import ConvaeError

fail_rank, fail_step = int(sys.argv[1]), int(sys.argv[2])
original_fit = train_module.Trainer.fit


def fit(self, on_step=None):
    def hook(step):
        if int(os.environ["RANK"]) == fail_rank and step == fail_step:
            raise ConvaeError(f"planted failure at step {step}")

    return original_fit(self, hook)


train_module.Trainer.fit = fit
sys.exit(main(sys.argv[4:]))
