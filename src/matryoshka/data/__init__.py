"""Data loaders: STS-B pairs, NLI triplets, BEIR retrieval sets and distillation text pairs.

Each loader takes a data set by hub name for users, or reads the same data from a local directory
named by the environment variable ``MATRYOSHKA_DATA`` (offline machines, CI).
"""

from matryoshka.data.local import data_root
from matryoshka.data.nli import load_nli_triplets
from matryoshka.data.pairs import load_distillation_pairs
from matryoshka.data.sts import StsPair, load_sts
from matryoshka.errors import DataError

__all__ = ["DataError", "StsPair", "data_root", "load_distillation_pairs", "load_nli_triplets", "load_sts"]
