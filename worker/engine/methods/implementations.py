"""The torch implementation of a method, resolved from the import path its `lethe.methods.METHODS` spec names."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lethe.methods import METHODS, MethodParams
from lethe.registry import resolve
from worker.engine.training.objective import Objective

# A builder turns a method's parsed params and the run's seed into its training objective.
ObjectiveBuilder = Callable[[Any, int], Objective]


def objective_builder(method: str) -> ObjectiveBuilder:
    """The builder of `method`'s objective (UnknownNameError for a method that is not registered)."""
    builder: ObjectiveBuilder = resolve(METHODS.get(method).implementation)
    return builder


def build_objective(method: str, params: MethodParams, seed: int) -> Objective:
    """`method`'s training objective with its parsed `params`, seeded by the run's `seed`."""
    return objective_builder(method)(params, seed)
