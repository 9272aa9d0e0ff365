"""The harness: the level above the library, importing it and never imported by it.

``torchfpe.lab`` holds what runs experiments rather than what FPE is: the command line (:mod:`.cli`)
and its Python twin (:mod:`.api`), the two-phase protocol and the experiments (:mod:`.experiments`),
the training loops (:mod:`.train`, :mod:`.batched`), sweeps and the result store (:mod:`.sweep`), and
reports (:mod:`.report`). It needs the ``experiments`` extra; ``import torchfpe`` never loads it.
"""
