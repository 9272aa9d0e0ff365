"""The variant grammar ``<split>[@<budget>][@carry]`` has one writer (variant_name) and one reader
(read_variant, which parse_variant checks against the registries); the report reads through it."""

import pytest

from torchfpe.core import BUDGETS, SPLITS
from torchfpe.lab.experiments.protocol import parse_variant, read_variant, variant_name
from torchfpe.lab.report.constants import wide_scale
from torchfpe.lab.report.figures import variant_color, variant_marker


@pytest.mark.parametrize("split", SPLITS.where(at_init=False))
def test_every_name_the_writer_makes_the_reader_reads_back(split):
    for budget in (None, *BUDGETS):
        for carry in (False, True):
            name = variant_name(split, budget, carry)
            variant = parse_variant(name)
            assert (variant.split, variant.budget, variant.carry) == (split, budget, carry)
            assert variant_name(variant.split, variant.budget, variant.carry) == name


def test_stored_names_of_splits_registered_elsewhere_are_read_but_not_accepted():
    stored = read_variant("mine@structured@carry")
    assert (stored.kind, stored.split, stored.modifiers) == ("split", "mine", ("structured", "carry"))
    with pytest.raises(ValueError, match="unknown variant 'mine@structured@carry'"):
        parse_variant("mine@structured@carry")
    assert read_variant("wide1.5").scale == 1.5 and wide_scale("wide1.5") == 1.5 and wide_scale("random") is None
    assert read_variant("not a variant") is None and read_variant(None) is None


def test_the_report_shades_and_marks_a_variant_by_its_modifiers():
    assert variant_marker("random@carry") == "D" and variant_marker("random") == "o"
    assert variant_color("random@carry") != variant_color("random")
    assert variant_color("mine@carry") == variant_color("mine@carry")  # a split registered elsewhere: still one colour
