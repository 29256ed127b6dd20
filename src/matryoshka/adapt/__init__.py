"""Make any frozen embedding model Matryoshka for a corpus: a rotation, or a learned linear adaptor,
chosen on held-out data so that the result is never worse than the free rotation.

- :mod:`~matryoshka.adapt.adaptor`: the :class:`Adaptor` type (a square map, then re-normalization)
  and its safetensors file; :meth:`Adaptor.apply` maps vectors of any source (a hosted API too).
- :mod:`~matryoshka.adapt.rotation`: :func:`fit_rotation`, the orthogonal map onto the corpus's
  principal axes. Full-size cosines unchanged, seconds to fit.
- :mod:`~matryoshka.adapt.learned`: :func:`fit_learned`, a map trained at every prefix with
  Matryoshka-Adaptor's losses (Yoon et al., 2024), plus a ranking term given (query, document) pairs.
- :mod:`~matryoshka.adapt.validation` and :mod:`~matryoshka.adapt.choice`: held-out checks (labelled
  queries, or full-size neighbours of held-out texts) and :func:`choose_adaptor`, the validated choice.
- :mod:`~matryoshka.adapt.report`: :class:`AdaptReport`, written as ``adapt-report.json``/``.md``.
- :mod:`~matryoshka.adapt.model`: :func:`adapt` from texts, and the adapted sentence-transformers model
  (its ``config.json`` states ``matryoshka_dimensions``, the dims that keep 95% of full-size quality).
- :mod:`~matryoshka.adapt.applied`: :class:`AdaptedModel`, any model (an upstream API too) followed by an
  adaptor at encode time, with the same ``encode`` surface.

Example:
    >>> from matryoshka.adapt import adapt
    >>> result = adapt(model, corpus_texts, pairs=train_pairs)     # doctest: +SKIP
    >>> print(result.report.to_markdown())                          # doctest: +SKIP
"""

from matryoshka.adapt.adaptor import ADAPTOR_FILE, METHODS, AdaptError, Adaptor, Method, checked_unit_rows, load_vectors
from matryoshka.adapt.adaptor import checked_unit_rows as unit_rows  # the name this package exported before
from matryoshka.adapt.applied import AdaptedModel, adaptor_dimensions, load_adapted
from matryoshka.adapt.choice import choose_adaptor
from matryoshka.adapt.learned import LearnedConfig, PairSet, fit_learned, nearest_neighbours, pair_set_from_judgements
from matryoshka.adapt.model import (
    AdaptResult,
    adapt,
    adapted_model,
    judgements_from_pairs,
    model_dimensions,
    save_adapted_model,
    write_matryoshka_dimensions,
)
from matryoshka.adapt.report import REPORT_STEM, AdaptReport, CandidateScores
from matryoshka.adapt.rotation import fit_rotation
from matryoshka.adapt.validation import Judgements, ValidationConfig

__all__ = [
    "ADAPTOR_FILE",
    "METHODS",
    "REPORT_STEM",
    "AdaptError",
    "AdaptReport",
    "AdaptResult",
    "AdaptedModel",
    "Adaptor",
    "CandidateScores",
    "Judgements",
    "LearnedConfig",
    "Method",
    "PairSet",
    "ValidationConfig",
    "adapt",
    "adapted_model",
    "adaptor_dimensions",
    "checked_unit_rows",
    "choose_adaptor",
    "fit_learned",
    "fit_rotation",
    "judgements_from_pairs",
    "load_adapted",
    "load_vectors",
    "model_dimensions",
    "nearest_neighbours",
    "pair_set_from_judgements",
    "save_adapted_model",
    "unit_rows",
    "write_matryoshka_dimensions",
]
