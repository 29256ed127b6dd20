"""Stage specs: parsing, presets, validation and the per-search plan."""

from __future__ import annotations

import dataclasses

import pytest

from matryoshka.retrieval.stages import (
    FULL,
    PRESETS,
    Stage,
    as_float_scan,
    bytes_per_vector,
    format_stages,
    parse_stages,
    resolve_stages,
    validate_stages,
)


def test_parse_two_stage_spec() -> None:
    assert parse_stages("64:binary:400,384:float32:10") == [Stage(64, "binary", 400), Stage(384, "float32", 10)]


def test_parse_full_and_whitespace() -> None:
    assert parse_stages(" 128:int8:200 , full:float16:10 ") == [Stage(128, "int8", 200), Stage(FULL, "float16", 10)]


def test_parse_preset_name_returns_a_copy() -> None:
    stages = parse_stages("funnel")
    assert stages == PRESETS["funnel"]
    stages.append(Stage(8, "float32", 1))
    assert len(PRESETS["funnel"]) == 2


def test_presets_are_valid_funnels() -> None:
    assert PRESETS["exact"] == [Stage(FULL, "float32", 10)]
    for name in ("exact", "funnel", "binary"):
        assert validate_stages(PRESETS[name], 384) == PRESETS[name]
        assert PRESETS[name][-1].dim == FULL
    assert PRESETS["funnel"][0] == Stage(64, "float32", PRESETS["funnel"][0].keep)
    assert PRESETS["binary"][0].codec == "binary"


@pytest.mark.parametrize(
    "spec",
    [
        "64:float32:400,full:float32:10",
        "full:float32:10",
        "256:binary:1000,64:int8:100,full:float32:10",
        "64:hnsw:200,full:float32:10",
        "64:hnsw:200:800,full:float32:10",
    ],
)
def test_format_round_trip(spec: str) -> None:
    assert format_stages(parse_stages(spec)) == spec


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty stage spec"),
        ("64:float32", "must be 'dim:codec:keep'"),
        ("64:float32:10:3", "must be 'dim:codec:keep'"),
        ("x:float32:10", "must be integers"),
        ("64:float32:ten", "must be integers"),
        ("64:float64:10", "codec must be one of"),
        ("0:float32:10", "dim must be positive"),
        ("-8:float32:10", "dim must be positive"),
        ("64:float32:0", "keep must be a positive"),
        ("60:binary:100,full:float32:10", "multiple of 8"),
        ("64:float32:100,128:float32:200,full:float32:10", "stage 2 keeps 200 but stage 1 only passes 100"),
        ("nonsense", "presets are"),
        ("64:hnsw:100:x,full:float32:10", "must be integers"),
        ("64:hnsw:100:0,full:float32:10", "probe must be a positive"),
        ("64:float32:100:4,full:float32:10", "must be 'dim:codec:keep'"),
        ("64:float32:400,32:hnsw:100,full:float32:10", "only a first stage"),
    ],
)
def test_bad_specs_raise_clear_errors(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_stages(spec)


def test_stage_is_frozen_and_validated() -> None:
    stage = Stage(64, "float32", 10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        stage.dim = 32  # type: ignore[misc]
    with pytest.raises(ValueError, match="codec"):
        Stage(64, "int4", 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dim"):
        Stage(True, "float32", 10)  # type: ignore[arg-type]
    assert str(Stage(FULL, "binary", 5)) == "full:binary:5"


def test_validate_against_full_dim() -> None:
    with pytest.raises(ValueError, match="reads 512 dims but the vectors have 384"):
        validate_stages([Stage(512, "float32", 10)], 384)
    with pytest.raises(ValueError, match="not a multiple of 8"):
        validate_stages([Stage(FULL, "binary", 10)], 30)
    with pytest.raises(ValueError, match="at least one stage"):
        validate_stages([], 384)


def test_resolve_sets_full_dim_last_keep_and_clamps() -> None:
    stages = parse_stages("64:binary:400,128:float32:50,full:float32:3")
    assert resolve_stages(stages, 384, k=10, count=10_000) == [
        Stage(64, "binary", 400),
        Stage(128, "float32", 50),
        Stage(384, "float32", 10),
    ]
    # a shortlist never holds fewer than k, and nothing keeps more than the index holds
    assert resolve_stages(stages, 384, k=100, count=10_000)[1] == Stage(128, "float32", 100)
    assert [s.keep for s in resolve_stages(stages, 384, k=10, count=30)] == [30, 30, 10]
    with pytest.raises(ValueError, match="k must be a positive integer"):
        resolve_stages(stages, 384, k=0, count=10)


def test_bytes_per_vector() -> None:
    assert bytes_per_vector(Stage(FULL, "float32", 1), 384) == 1536
    assert bytes_per_vector(Stage(64, "float16", 1), 384) == 128
    assert bytes_per_vector(Stage(64, "int8", 1), 384) == 64
    assert bytes_per_vector(Stage(256, "binary", 1), 384) == 32
    assert bytes_per_vector(Stage(64, "ivfpq", 1), 384) == 32


def test_probe_is_only_for_approximate_stages() -> None:
    assert str(Stage(64, "ivf", 200, probe=32)) == "64:ivf:200:32"
    assert parse_stages("64:ivf:200:32,full:float32:10")[0] == Stage(64, "ivf", 200, 32)
    assert parse_stages("64:ivfpq:10000:512,128:int8:500,full:float32:10")[0] == Stage(64, "ivfpq", 10000, 512)
    with pytest.raises(ValueError, match="only an hnsw, ivf or ivfpq stage takes a probe"):
        Stage(64, "float32", 200, probe=400)
    with pytest.raises(ValueError, match="only a first\nstage|only a first stage"):
        parse_stages("full:float32:1000,64:ivfpq:100")


def test_engines_run_an_approximate_shortlist_as_their_float_shortlist() -> None:
    from matryoshka.indexes.base import funnel_shape, prefix_only

    shortlist, last = funnel_shape(parse_stages("64:ivf:400:32,full:float32:10"), 384)
    assert shortlist == Stage(64, "float32", 400) and last == Stage(FULL, "float32", 10)
    assert prefix_only([Stage(64, "hnsw", 10, 50)], 384) == Stage(64, "float32", 10)
    assert as_float_scan(Stage(64, "int8", 10)) == Stage(64, "int8", 10)


def test_graph_stage_widens_a_full_size_rerank_and_only_that() -> None:
    assert parse_stages("64:ivfpq:4000:320,full:float32:10,full:graph:10")[-1] == Stage(FULL, "graph", 10)
    assert validate_stages([Stage(64, "float32", 100), Stage(384, "graph", 10)], 384)[-1].codec == "graph"
    with pytest.raises(ValueError, match="cannot be first"):
        parse_stages("full:graph:10")
    with pytest.raises(ValueError, match="write it as full:graph:10"):
        parse_stages("64:float32:100,64:graph:10")
    assert bytes_per_vector(Stage(FULL, "graph", 10), 384) == 1536  # it reads its candidates' full vectors
    # engines and filtered searches re-rank instead of walking a graph of their own
    assert as_float_scan(Stage(FULL, "graph", 10)) == Stage(FULL, "float32", 10)
