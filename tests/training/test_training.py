from dataclasses import replace

import pytest
import torch
from sentence_transformers import SentenceTransformer

from matryoshka.models.loading import build_static_model, load_model
from matryoshka.training.losses import InBatchSimilarityDistillationLoss, prefix_vector_mse, similarity_mse
from matryoshka.training.train import TrainConfig, build_dataset, train

PAIRS = [
    ("A man is playing a guitar.", "A person plays an instrument."),
    ("A woman is slicing onions.", "Someone is cutting vegetables."),
    ("The cat sleeps on the sofa.", "A kitten naps on a couch."),
    ("Stocks fell sharply on Monday.", "The market dropped at the start of the week."),
    ("Children are playing football.", "Kids kick a ball in a park."),
    ("A plane is taking off.", "An airplane leaves the runway."),
    ("He is reading a newspaper.", "A man reads the news."),
    ("The soup is too salty.", "There is too much salt in the soup."),
] * 4
TRIPLETS = [(a, b, PAIRS[(i + 1) % 8][1]) for i, (a, b) in enumerate(PAIRS)]


def test_distillation_loss_is_zero_for_the_teacher_itself(model):
    dataset, table = build_dataset(TrainConfig(distill_loss="inbatch", show_progress_bar=False), model, PAIRS[:8])
    loss = InBatchSimilarityDistillationLoss(model, table)
    features = [model.tokenize(dataset["sentence1"]), model.tokenize(dataset["sentence2"])]
    model.eval()
    with torch.no_grad():
        value = loss(features, torch.tensor(dataset["label"]))
    assert value.item() == pytest.approx(0.0, abs=1e-6)
    shuffled = torch.tensor(dataset["label"][::-1])  # wrong teacher rows: a real error signal
    with torch.no_grad():
        assert loss(features, shuffled).item() > 0.1


def test_the_vector_term_pins_the_teachers_axes_which_cosines_alone_do_not():
    generator = torch.Generator().manual_seed(0)
    table = torch.nn.functional.normalize(torch.randn(16, 1, 32, generator=generator), dim=-1)
    labels = torch.arange(16)
    rotation, _ = torch.linalg.qr(torch.randn(32, 32, generator=generator))
    rotated = [table[:, 0] @ rotation]  # same cosines, other axes
    assert similarity_mse(rotated, table, labels).item() == pytest.approx(0.0, abs=1e-10)
    assert prefix_vector_mse(rotated, table, labels).item() > 0.5
    prefix = [3.0 * table[:, 0, :8]]  # the teacher's own 8-d prefix, at any length, is the target at size 8
    assert prefix_vector_mse(prefix, table, labels).item() == pytest.approx(0.0, abs=1e-10)
    assert prefix_vector_mse(prefix, table, labels.flip(0)).item() > 0.1
    with pytest.raises(ValueError, match="vector_weight"):
        InBatchSimilarityDistillationLoss(None, table, vector_weight=-1.0)  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.parametrize("matryoshka", [False, True])
@pytest.mark.parametrize("objective,distill_loss,rows", [
    ("distill", "cosine", PAIRS), ("distill", "cosent", PAIRS), ("nli", "cosine", TRIPLETS),
    ("retrieval", "cosine", PAIRS), ("retrieval", "cosine", TRIPLETS), ("distill", "cosent", [(a,) for a, _ in PAIRS]),
])
def test_tiny_training_runs_and_saves_a_loadable_model(tmp_path, objective, distill_loss, rows, matryoshka):
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = load_model(device="cpu")
    before = model.encode(["A man is playing a guitar."], convert_to_tensor=True)
    config = TrainConfig(objective=objective, distill_loss=distill_loss, matryoshka=matryoshka, batch_size=8, max_steps=3,
                         learning_rate=1e-4, show_progress_bar=False,
                         data="rows" if objective == "retrieval" else None, distill_weight=float(matryoshka))
    result = train(model, config, tmp_path / "out", rows=rows)
    assert result.steps == 3 and len(result.losses) >= 1
    reloaded = SentenceTransformer(str(tmp_path / "out"), device="cpu")
    after = reloaded.encode(["A man is playing a guitar."], convert_to_tensor=True)
    assert after.shape == before.shape and not torch.allclose(before, after)
    assert (tmp_path / "out" / "modules.json").exists()
    assert not list(tmp_path.glob(".out.*"))


@pytest.mark.slow
@pytest.mark.parametrize("matryoshka", [False, True])
def test_layers_training_runs_with_matryoshka2d(tmp_path, matryoshka):
    from sentence_transformers.sentence_transformer.losses import AdaptiveLayerLoss, Matryoshka2dLoss

    from matryoshka.training.train import build_loss

    model = load_model(device="cpu")
    config = TrainConfig(distill_loss="cosent", matryoshka=matryoshka, layers=True, batch_size=8, max_steps=3,
                         learning_rate=1e-4, show_progress_bar=False)
    loss = build_loss(model, config, None)
    assert isinstance(loss, Matryoshka2dLoss if matryoshka else AdaptiveLayerLoss)
    result = train(model, config, tmp_path / "out", rows=PAIRS)
    assert result.steps == 3
    cut = load_model(str(tmp_path / "out"), layers=2)
    assert cut.encode(["A man is playing a guitar."], truncate_dim=32).shape == (1, 32)


def test_static_model_trains_with_matryoshka(tmp_path, model):
    static = build_static_model(embedding_dim=64, seed=0)
    assert static.get_embedding_dimension() == 64
    config = TrainConfig(objective="distill", distill_loss="inbatch", dims=(64, 32, 8), batch_size=8, max_steps=3,
                         learning_rate=0.05, show_progress_bar=False)
    dataset, table = build_dataset(config, model, PAIRS)
    # the teacher is 384-d, the student 64-d: similarities, not vectors, are distilled
    result = train(static, config, tmp_path / "static", train_dataset=dataset, teacher_table=table)
    assert result.steps == 3
    assert SentenceTransformer(str(tmp_path / "static")).encode(["x"]).shape == (1, 64)


@pytest.mark.parametrize("kwargs,message", [
    ({"dims": (384, 0)}, "dims must be in"),
    ({"dims": (512, 64)}, "dims must be in"),
    ({"dims": (128, 64)}, "include the full size"),
    ({"weights": (1, 2)}, "weights for"),
    ({"objective": "mse"}, "objective"),
    ({"batch_size": 1}, "batch_size"),
    ({"learning_rate": 0}, "learning_rate"),
    ({"objective": "retrieval"}, "needs data"),
    ({"objective": "retrieval", "data": "x", "distill_weight": -1}, "distill_weight"),
    ({"objective": "sts", "data": "x"}, "gold scores"),
])
def test_bad_configs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs).validate(384)


def test_cosine_labels_are_the_teacher_cosines(model):
    dataset, table = build_dataset(TrainConfig(show_progress_bar=False), model, PAIRS[:4])
    vectors = model.encode([PAIRS[0][0], PAIRS[0][1]], convert_to_tensor=True, normalize_embeddings=True)
    assert dataset["label"][0] == pytest.approx(float(vectors[0] @ vectors[1]), abs=1e-4)
    assert table.shape == (4, 2, 384)


def test_too_few_rows_for_a_batch(tmp_path, model):
    with pytest.raises(ValueError, match="fewer than one batch"):
        train(model, TrainConfig(batch_size=64, show_progress_bar=False), tmp_path, rows=PAIRS[:8])


def test_retrieval_distillation_term_is_zero_at_the_teacher_and_ranking_trains(model):
    from matryoshka.training.losses import RankingDistillationLoss

    config = TrainConfig(objective="retrieval", data="rows", distill_weight=1.0, show_progress_bar=False)
    dataset, table = build_dataset(config, model, PAIRS[:8])
    assert table.shape == (8, 2, 384) and dataset.column_names == ["anchor", "positive", "label"]
    with_term = RankingDistillationLoss(model, table, distill_weight=1.0)
    without = RankingDistillationLoss(model, None, distill_weight=0.0)
    features = [model.tokenize(dataset["anchor"]), model.tokenize(dataset["positive"])]
    labels = torch.tensor(dataset["label"])
    model.eval()
    with torch.no_grad():
        assert with_term(features, labels).item() == pytest.approx(without(features, labels).item(), abs=1e-5)
        assert with_term(features, labels.flip(0)).item() > without(features, labels).item() + 0.1


def test_user_data_shape_must_fit_the_objective(tmp_path, model):
    from matryoshka.errors import DataError

    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(f'{{"text": "sentence {i}"}}\n' for i in range(16)))
    with pytest.raises(DataError, match="needs 'anchor' and 'positive' columns"):
        train(model, TrainConfig(objective="retrieval", data=str(texts), show_progress_bar=False), tmp_path / "m")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("anchor,positive\n" + "".join(f"q{i},d{i}\n" for i in range(16)))
    with pytest.raises(DataError, match="needs a 'negative' column"):
        train(model, TrainConfig(objective="nli", data=str(pairs), show_progress_bar=False), tmp_path / "m")


def test_the_recipe_weights_follow_the_ladder_of_any_model_size():
    """The self-distillation recipes weigh prefixes by size, so a 768-d model's seven sizes get them too."""
    from matryoshka.embeddings.vectors import dimension_ladder
    from matryoshka.experiments.compare import CompareConfig
    from matryoshka.training.losses import weights_by_size
    from matryoshka.training.top_layer import TopLayerConfig

    for full in (384, 768, 96):
        ladder = dimension_ladder(full)
        weights = weights_by_size(ladder)
        assert len(weights) == len(ladder) and dict(zip(ladder, weights))[32] == 8.0
        assert set(dict(zip(ladder, weights)).values()) <= {1.0, 2.0, 4.0, 8.0}
        TrainConfig(dims=tuple(ladder), weights=weights).validate(full)
        assert TopLayerConfig().scored(full) == list(zip(weights, ladder))
    assert weights_by_size(dimension_ladder(768)) == (1.0, 1.0, 1.0, 1.0, 2.0, 8.0, 4.0)
    assert CompareConfig().distill.weights is None  # taken by run_compare from the base model's ladder
    assert build_static_model(seed=0).get_embedding_dimension() == load_model().get_embedding_dimension()  # not a fixed 384


@pytest.mark.slow
def test_the_sts_objective_ranks_by_gold_scores(tmp_path):
    """``objective="sts"``: CoSENT on STS-B train's gold scores (0..1), seeded order, a teacher refused."""
    from matryoshka.data import load_sts
    from matryoshka.training.train import gold_sts_dataset

    config = TrainConfig(objective="sts", batch_size=8, max_steps=2, max_examples=40, show_progress_bar=False)
    data = gold_sts_dataset(config)
    gold = {(p.sentence1, p.sentence2): p.score for p in load_sts("train")}
    assert len(data) == 40 and all(gold[(r["sentence1"], r["sentence2"])] == r["label"] for r in data)
    assert len({r["label"] for r in data}) > 5 and data["sentence1"] != gold_sts_dataset(replace(config, seed=1))["sentence1"]
    model = load_model(device="cpu")
    with pytest.raises(ValueError, match="not from a teacher"):
        train(model, config, tmp_path / "no", teacher=model)
    result = train(model, config, tmp_path / "out")
    assert result.steps == 2 and result.losses and (tmp_path / "out" / "modules.json").exists()
