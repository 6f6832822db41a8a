import math

import pytest
import torch

from convae.objectives import nt_xent


def test_nt_xent_rewards_views_that_match_and_stand_apart():
    n = 8
    blind = torch.ones(n, 5)  # every view alike: the positive is one of 2n - 1 equal candidates
    assert float(nt_xent(blind, blind, 0.5)) == pytest.approx(math.log(2 * n - 1), rel=1e-5)
    apart = torch.eye(n)  # each sample its own direction, both views on it
    assert float(nt_xent(apart, apart, 0.1)) < 1e-3
    swapped = torch.eye(n).roll(1, 0)  # each view closest to another sample's: worse than blind
    assert float(nt_xent(apart, swapped, 0.5)) > math.log(2 * n - 1)
