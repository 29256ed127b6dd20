"""Search stages: which prefix of the vectors to score, in which precision, and how many to keep.

A funnel is a list of stages. The first stage scans every vector through a cheap view (a short
prefix, its sign bits, or int8 codes) and keeps a shortlist; each later stage re-scores only the
survivors with a richer view; the last stage returns the ``k`` best. A stage spec is written
``dim:codec:keep`` and stages are joined by commas, e.g. ``"64:binary:400,full:float32:10"``.

A first stage may instead search an approximate index over the prefix, which visits a few thousand
vectors instead of all of them: ``64:hnsw:400`` walks an HNSW graph (``64:hnsw:400:800`` sets its
search breadth ``ef``, default ``keep``); ``64:ivf:400`` scans the inverted lists nearest the query
(``64:ivf:400:64`` probes 64 lists); ``64:ivfpq:10000:512`` does the same over 4-bit codes of the
prefix (one per dimension, FAISS fast-scan), so each probed list costs an eighth of ``ivf``'s reads.
The later stages re-rank what it finds. A last stage ``full:graph:10`` widens the hits before it by
their nearest neighbours in a graph of the full vectors (:mod:`matryoshka.indexes.faiss.neighbours`) and
re-scores them all on the full vectors, which finds true neighbours the prefix stages lost: at a
million vectors the fastest funnels we measured at recall@10 0.99 are of the shape
``64:ivfpq:4000:384,128:int8:300,full:float32:20,full:graph:10`` (``benchmarks/results/funnel.md``).

Example:
    >>> parse_stages("64:float32:400,full:float32:10")
    [Stage(dim=64, codec='float32', keep=400), Stage(dim=0, codec='float32', keep=10)]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from matryoshka.errors import InputError

Codec = Literal["float32", "float16", "int8", "binary", "hnsw", "ivf", "ivfpq", "graph"]
#: Codecs that search an approximate index built over the prefix (first stage only).
APPROXIMATE: tuple[str, ...] = ("hnsw", "ivf", "ivfpq")
CODECS: tuple[str, ...] = get_args(Codec)

#: ``Stage.dim`` value meaning "the index's full dimension" (written ``full`` in a spec).
FULL = 0


@dataclass(frozen=True)
class Stage:
    """One pass of a funnel.

    Attributes:
        dim: prefix length scored by this stage; :data:`FULL` (0) means the full dimension.
        codec: how the prefix is compared: ``float32``/``float16`` (cosine), ``int8`` (FAISS scalar
            quantizer, per-dimension ranges), ``binary`` (sign bits, Hamming distance), ``hnsw``
            (a FAISS HNSW graph over the float32 prefix), ``ivf`` (FAISS inverted lists over it) or
            ``ivfpq`` (inverted lists over 4-bit codes of it), the last three only as a first stage; or
            ``graph`` (the candidates and their nearest neighbours in a graph of the full vectors,
            scored on the full float vectors), only at the full dimension and not as a first stage.
        keep: candidates passed to the next stage; for the last stage it is replaced by ``k``.
        probe: ``hnsw``: the graph search's candidate list ``ef`` (``None``: ``keep``); ``ivf`` and
            ``ivfpq``: lists scanned, ``nprobe`` (``None``: a 64th of them). Larger finds more of the true prefix
            neighbours, slower.
    """

    dim: int
    codec: Codec
    keep: int
    probe: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 0:
            raise InputError(f"stage dim must be a positive integer or FULL (0), got {self.dim!r}")
        if self.codec not in CODECS:
            raise InputError(f"stage codec must be one of {', '.join(CODECS)}, got {self.codec!r}")
        if isinstance(self.keep, bool) or not isinstance(self.keep, int) or self.keep < 1:
            raise InputError(f"stage keep must be a positive integer, got {self.keep!r}")
        if self.codec == "binary" and self.dim % 8:
            raise InputError(f"a binary stage needs a dim that is a multiple of 8, got {self.dim}")
        if self.probe is not None:
            if self.codec not in APPROXIMATE:
                raise InputError(f"only an hnsw, ivf or ivfpq stage takes a probe, not {self.codec}")
            if isinstance(self.probe, bool) or not isinstance(self.probe, int) or self.probe < 1:
                raise InputError(f"stage probe must be a positive integer, got {self.probe!r}")

    def __str__(self) -> str:
        probe = f":{self.probe}" if self.probe is not None else ""
        return f"{'full' if self.dim == FULL else self.dim}:{self.codec}:{self.keep}{probe}"


#: Named funnels; the last stage's keep becomes ``k`` at search time.
#: ``exact`` scans the full float32 vectors; ``funnel`` shortlists 1,000 by the 64-dim prefix;
#: ``binary`` shortlists 1,000 by the sign bits of the full vector (1 bit per dimension). Both re-rank
#: the shortlist with the full float32 vectors. Run the advisor to pick one for your model and data.
PRESETS: dict[str, list[Stage]] = {
    "exact": [Stage(FULL, "float32", 10)],
    "funnel": [Stage(64, "float32", 1000), Stage(FULL, "float32", 10)],
    "binary": [Stage(FULL, "binary", 1000), Stage(FULL, "float32", 10)],
}


def parse_stages(spec: str) -> list[Stage]:
    """Parse ``"dim:codec:keep,..."`` (``dim`` may be ``full``) or a preset name into stages.

    Raises:
        InputError: the spec is empty, a stage is malformed, or keeps grow from one stage to the next.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise InputError("empty stage spec; expected e.g. '64:binary:400,full:float32:10' or a preset name")
    text = spec.strip()
    if text in PRESETS:
        return list(PRESETS[text])
    stages = []
    for position, part in enumerate(text.split(","), start=1):
        fields = [f.strip() for f in part.split(":")]
        if len(fields) not in (3, 4) or (len(fields) == 4 and fields[1] not in APPROXIMATE):
            raise InputError(
                f"stage {position} {part.strip()!r} must be 'dim:codec:keep' (e.g. '64:binary:400', or "
                f"'64:hnsw:400:800' / '64:ivf:400:64' / '64:ivfpq:4000:256' with a probe); presets are "
                f"{', '.join(PRESETS)}"
            )
        dim_text, codec, keep_text = fields[:3]
        try:
            dim = FULL if dim_text.lower() == "full" else int(dim_text)
            keep = int(keep_text)
            probe = int(fields[3]) if len(fields) == 4 else None
        except ValueError:
            raise InputError(
                f"stage {position} {part.strip()!r}: dim, keep and probe must be integers (dim may be 'full')"
            ) from None
        if dim_text.lower() != "full" and dim < 1:
            raise InputError(f"stage {position} {part.strip()!r}: dim must be positive or 'full'")
        try:
            stages.append(Stage(dim, codec, keep, probe))  # type: ignore[arg-type]
        except InputError as exc:
            raise InputError(f"stage {position} {part.strip()!r}: {exc}") from None
    validate_stages(stages)
    return stages


def format_stages(stages: Sequence[Stage]) -> str:
    """The spec string of ``stages`` (inverse of :func:`parse_stages`)."""
    return ",".join(str(stage) for stage in stages)


def validate_stages(stages: Sequence[Stage], full_dim: int | None = None) -> list[Stage]:
    """Check that ``stages`` form a funnel (and fit ``full_dim`` when given); return them as a list.

    Raises:
        InputError: no stages, a non-:class:`Stage`, a shortlist larger than the one before it, an
            approximate stage after the first, a graph stage first or on a prefix, or a dim larger
            than ``full_dim``.
    """
    stages = list(stages)
    if not stages:
        raise InputError("a funnel needs at least one stage")
    for stage in stages:
        if not isinstance(stage, Stage):
            raise InputError(f"expected Stage objects, got {stage!r}")
    if stages[0].codec == "graph":
        raise InputError(
            f"stage 1 ({stages[0]}): a graph stage widens the hits of the stage before it, so it cannot be first"
        )
    for position, stage in enumerate(stages, start=1):
        if stage.codec == "graph" and stage.dim not in (FULL, full_dim):
            raise InputError(
                f"stage {position} ({stage}): a graph stage scores the full vectors; write it as full:graph:{stage.keep}"
            )
    for position, stage in enumerate(stages[1:], start=2):
        if stage.codec in APPROXIMATE:
            raise InputError(
                f"stage {position} ({stage}): {stage.codec} searches an index over every vector, so only a first "
                "stage can use it; re-rank its shortlist with float32, float16, int8 or binary"
            )
    for position, (before, after) in enumerate(zip(stages[:-2], stages[1:-1]), start=2):
        if after.keep > before.keep:
            raise InputError(
                f"stage {position} keeps {after.keep} but stage {position - 1} only passes {before.keep} candidates"
            )
    if full_dim is not None:
        for position, stage in enumerate(stages, start=1):
            if stage.dim > full_dim:
                raise InputError(f"stage {position} ({stage}) reads {stage.dim} dims but the vectors have {full_dim}")
            if stage.codec == "binary" and (stage.dim or full_dim) % 8:
                raise InputError(
                    f"stage {position} ({stage}) is binary but the full dim {full_dim} is not a multiple of 8"
                )
    return stages


def check_keeps(stages: Sequence[Stage], k: int) -> None:
    """Refuse a funnel that cannot return ``k`` hits as written, instead of raising its keeps silently.

    :func:`resolve_stages` lifts an earlier stage's ``keep`` to ``k`` (useful in experiments); the
    server and ``matryoshka index search`` call this first, so a user who asks for 100 hits through a
    stage that keeps 10 is told so.

    Raises:
        InputError: a shortlist stage keeps fewer than ``k``, or keeps more than the stage before it.
    """
    stages = list(stages)
    for position, stage in enumerate(stages[:-1], start=1):
        if stage.keep < k:
            raise InputError(
                f"stage {position} ({stage}) keeps {stage.keep} candidates, fewer than k={k}; "
                f"raise its keep to at least {k} or ask for fewer hits"
            )
        if position > 1 and stage.keep > stages[position - 2].keep:
            raise InputError(
                f"stage {position} keeps {stage.keep} but stage {position - 1} only passes {stages[position - 2].keep}"
            )


def resolve_stages(stages: Sequence[Stage], full_dim: int, k: int, count: int) -> list[Stage]:
    """The concrete plan for one search: ``FULL`` → ``full_dim``; the last keep is ``k``; earlier
    shortlists hold at least ``k``; no keep exceeds ``count`` vectors."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    stages = validate_stages(stages, full_dim)
    plan = []
    for position, stage in enumerate(stages):
        keep = k if position == len(stages) - 1 else max(stage.keep, k)
        plan.append(Stage(stage.dim or full_dim, stage.codec, max(1, min(keep, count)), stage.probe))
    return plan


def as_float_scan(stage: Stage) -> Stage:
    """``stage`` with an ``hnsw``/``ivf``/``ivfpq`` search replaced by a float32 search of the same
    prefix, and a ``graph`` stage by a float32 re-rank.

    Used where a graph of its own would not pay: a filtered search over a one-off subset, and the
    engines (PostgreSQL, Qdrant), which already search every float shortlist through their own HNSW.
    """
    return Stage(stage.dim, "float32", stage.keep) if stage.codec in (*APPROXIMATE, "graph") else stage


def bytes_per_vector(stage: Stage, full_dim: int) -> int:
    """Bytes per vector that ``stage`` reads when it scans (or, for ``hnsw``, stores as the graph's
    vectors): 4/2/1 per dim, half a byte per dim (``ivfpq``), or one bit per dim (``graph`` reads
    the full float32 vectors of its candidates)."""
    dim = stage.dim or full_dim
    return {"float32": 4 * dim, "float16": 2 * dim, "int8": dim, "binary": (dim + 7) // 8, "hnsw": 4 * dim, "ivf": 4 * dim,
            "ivfpq": (dim + 1) // 2, "graph": 4 * dim}[stage.codec]
