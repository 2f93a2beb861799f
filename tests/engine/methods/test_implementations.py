"""Every registered method and attack resolves to its torch implementation; the methods' plug-ins."""

import pytest

from lethe.attacks import ATTACKS
from lethe.methods import METHODS, PluginParams
from worker.engine.audit.attacks.implementations import attack_implementation
from worker.engine.methods.implementations import objective_builder
from worker.engine.methods.plugins import build_plugins

PLUGIN_METHODS = ["gradient_ascent", "grad_diff", "npo", "simnpo", "idk"]


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_resolves_to_a_builder_that_makes_its_objective(name: str) -> None:
    objective = objective_builder(name)(METHODS.get(name).parse({}), 0)
    assert callable(objective.losses)


@pytest.mark.parametrize("name", ATTACKS.names())
def test_every_attack_resolves_to_a_function_of_its_name(name: str) -> None:
    attack = attack_implementation(name)
    assert callable(attack) and attack.__name__ == name


@pytest.mark.parametrize("name", PLUGIN_METHODS)
def test_plugins_are_off_by_default(name: str) -> None:
    params = METHODS.get(name).parse({})
    assert isinstance(params, PluginParams)
    plugins = build_plugins(params)
    assert (plugins.retain_hooks, plugins.retain_terms) == ([], [])
    assert plugins.gradient_filter is None


def test_methods_without_plugin_params_get_none() -> None:
    for name in ("random_label", "rmu"):
        assert not build_plugins(METHODS.get(name).parse({})).needs_retain


def test_plugins_with_a_retain_term_are_accepted() -> None:
    params = METHODS.get("gradient_ascent").parse({"retain_kl_weight": 1, "project_gradients": True})
    plugins = build_plugins(params)
    assert len(plugins.retain_terms) == 1 and plugins.gradient_filter is not None
    params = METHODS.get("npo").parse({"rna_noise_std": 0.1, "rna_layer": 1})
    assert len(build_plugins(params).retain_hooks) == 1
