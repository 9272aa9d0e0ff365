"""alpha's upper bound is checked in one place (protocol.check_alpha), from each config's declared limit."""

import pytest

from torchfpe import InvalidParameterError
from torchfpe.lab.experiments import deep, lm, protocol


def test_each_config_declares_its_limit_and_one_check_reads_it():
    with pytest.raises(InvalidParameterError, match=r"'alpha' parameter of LMConfig must be an int in "
                                                    r"\[2, d_model=8\] \(the FFN's fan-in\)"):
        lm.EXPERIMENT.make_config(d_model=8, heads=2, alpha=9)
    with pytest.raises(InvalidParameterError, match=r"\[2, neurons=2\] \(the fan-in of the deeper hidden layers\)"):
        deep.EXPERIMENT.make_config(neurons=2, alpha=4)
    assert deep.EXPERIMENT.make_config(neurons=2, alpha=4, depth=1).alpha_limit() is None  # the data tell (heads)
    assert lm.EXPERIMENT.make_config(d_model=8, heads=2, alpha=8).alpha == 8


def test_the_check_is_the_protocols():
    class Config:
        alpha = 5

    with pytest.raises(InvalidParameterError, match=r"'alpha' parameter of Config must be an int in \[2, 4\] \(why\)"):
        protocol.check_alpha(Config(), 4, "4", "why")
