import os

import torch
from hypothesis import settings

# Small thread pools keep the suite fast and repeatable on 2-core CI machines.
torch.set_num_threads(min(2, os.cpu_count() or 1))
settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=40, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
