"""``GET /v1/models`` and ``GET /v1/models/{id}``: OpenAI's model list and model objects."""

from __future__ import annotations

from fastapi import APIRouter

from matryoshka.serving.schemas import ERROR_RESPONSES, ModelCard, ModelList
from matryoshka.serving.state import State

__all__ = ["router"]

router = APIRouter()


# No docstrings on these routes: FastAPI would publish them as the operations' descriptions.
@router.get("/v1/models", responses=ERROR_RESPONSES)
async def list_models(state: State) -> ModelList:
    return ModelList(data=[m.card() for m in state.models.values()])


@router.get("/v1/models/{model_id:path}", responses=ERROR_RESPONSES)
async def get_model(model_id: str, state: State) -> ModelCard:
    return state.get_model(model_id).card()
