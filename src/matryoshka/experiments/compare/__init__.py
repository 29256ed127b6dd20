"""The main job: make Matryoshka models from one base and compare them per dimension, beside the baselines.

Two tables, STS-B test (Spearman) and a retrieval set (SciFact test, nDCG@10), each with:

- ``base``: the untouched starting model, truncated;
- ``base+rotation``: the base's vectors rotated onto the principal axes of the task's texts (free,
  full-size cosines unchanged), the baseline a skeptic asks for first;
- ``adaptor-standard`` / ``adaptor-matryoshka``: a linear adaptor on the frozen base trained with the
  same losses, data and steps, at full size only (from the identity) or at every prefix. On STS-B it
  learns from STS-B train's gold scores and starts at the identity; on retrieval from the set's train
  (query, document) pairs, starting at the rotation. Seconds to minutes to fit.
- ``top-layer-standard`` / ``top-layer-matryoshka`` (STS-B, ``--quick``): the base's last transformer
  layer fine-tuned on cached inputs over STS-B train's pairs, self-distilled, at full size only or at
  every prefix (:mod:`matryoshka.training.top_layer`); about a minute each. On STS-B a linear adaptor cannot
  re-pack much: the base's own prefixes are already good there, and its rotation is worse.

The full run also fine-tunes models (``--quick`` skips this, which is what lets it finish in minutes):

- ``standard`` / ``matryoshka``: self-distillation on unlabelled local pairs, with the plain loss or
  wrapped in ``MatryoshkaLoss`` (scored on both tables);
- ``nli-standard`` / ``nli-matryoshka``: ``MultipleNegativesRankingLoss`` on NLI triplets, the
  Matryoshka article's experiment;
- ``static-distill``: model2vec's distillation of the base into a ``StaticEmbedding`` model (PCA
  to ``static_build.pca_dims``, 256 as chosen on STS-B dev; no training), see :mod:`matryoshka.training.static`;
- ``static-standard`` / ``static-matryoshka``: that distilled model trained further on local pairs
  to match the base's full-size similarities, with the plain loss or at every prefix.

The static rows start from model2vec's distillation and no longer from random weights. The
from-scratch models scored below the plain distillation at every size (0.692 full, 81.8% kept at 32
dims for ``static-matryoshka``), so they showed a weak model rather than what Matryoshka training
adds to one worth using; :func:`matryoshka.models.loading.build_static_model` still builds one. What the
static twins show now is that PCA has already nested the distilled model's dimensions: on STS-B the
standard twin scores at or above the Matryoshka one at every size (``benchmarks/results/encode/static.md``).

Each pair shares seed, data, order and hyper-parameters; only the loss (every prefix or full size) differs.

Modules: ``config`` (:class:`CompareConfig`), ``baselines`` (the STS-B rows of the frozen base: rotation,
adaptor and top-layer twins), ``finetune`` and ``static_rows`` (the trained twins), ``retrieval`` (the
retrieval table), ``previous`` (``--keep-previous``), ``run`` (:func:`run_compare`).
"""

from __future__ import annotations

# The underscored names are the module's private names from before it became a package; tests import them.
from matryoshka.experiments.compare.config import CompareConfig
from matryoshka.experiments.compare.finetune import train_pair as _train_pair  # noqa: F401
from matryoshka.experiments.compare.previous import previous_results as _previous_results  # noqa: F401
from matryoshka.experiments.compare.previous import same_training as _same_training  # noqa: F401
from matryoshka.experiments.compare.run import run_compare
from matryoshka.experiments.compare.static_rows import static_rows as _static_rows  # noqa: F401

__all__ = ["CompareConfig", "run_compare"]
