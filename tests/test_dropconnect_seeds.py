"""A run's DropConnect draws are its own: seed 0's dropconnect record is the same whichever seeds train with it
(its masks used to come from the global generator seeded with the stack's first seed)."""

from torchfpe.lab.experiments.registry import experiment

CONFIG = dict(warmup_epochs=3, epochs_after=6, train_size=64, test_size=64, variants="dense+dropconnect", neurons=6)


def _records(seeds):
    boolean = experiment("boolean")
    records = boolean.run([boolean.make_config(**CONFIG, seed=s) for s in seeds])
    return {(r["seed"], r["variant"]): {k: v.tolist() if hasattr(v, "tolist") else v for k, v in r.items()}
            for r in records}


def test_seed_zeros_dropconnect_record_is_the_same_with_one_or_two_seeds():
    alone, together = _records([0]), _records([0, 1])
    assert alone[(0, "dropconnect")] == together[(0, "dropconnect")]
    assert alone[(0, "dense")] == together[(0, "dense")]


def test_the_order_of_the_stack_does_not_change_a_record():
    assert _records([1, 0])[(0, "dropconnect")] == _records([0])[(0, "dropconnect")]

