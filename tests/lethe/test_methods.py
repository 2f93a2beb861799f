"""The methods' params as the API sees them: defaults and their sources, validation, kinds, retain needs."""

import pytest
from pydantic import BaseModel, ValidationError

from lethe.attacks import ATTACKS
from lethe.methods import (
    METHODS,
    IdkParams,
    MethodParams,
    NPOParams,
    RandomLabelParams,
    RMUParams,
    SimNPOParams,
    relative_layer,
)

COMMON_FIELDS = {
    "learning_rate",
    "epochs",
    "max_steps",
    "batch_size",
    "lora_rank",
    "lora_alpha",
    "stop_at_target",
    "target_tolerance",
    "evaluate_every",
    "utility_floor",
}
NEW_METHODS = ["grad_diff", "npo", "simnpo", "idk", "rmu"]


def test_every_method_names_an_implementation_in_the_engine() -> None:
    assert set(NEW_METHODS) <= set(METHODS.names())
    for name in METHODS.names():
        assert METHODS.get(name).implementation == f"worker.engine.methods.{name}:build"


@pytest.mark.parametrize("name", METHODS.names())
def test_json_schema_documents_every_field_with_a_default(name: str) -> None:
    schema = METHODS.get(name).json_schema()
    assert schema["additionalProperties"] is False
    for field, prop in schema["properties"].items():
        assert prop.get("description"), field
        assert "default" in prop, field


def test_defaults_follow_their_sources() -> None:
    npo = METHODS.get("npo").parse({})
    assert isinstance(npo, NPOParams)
    assert (npo.beta, npo.gamma, npo.alpha, npo.retain_loss) == (0.1, 1.0, 1.0, "nll")  # open-unlearning NPO.yaml
    simnpo = METHODS.get("simnpo").parse({})
    assert isinstance(simnpo, SimNPOParams)
    assert (simnpo.beta, simnpo.delta, simnpo.gamma, simnpo.alpha) == (4.5, 0.0, 0.125, 1.0)  # SimNPO.yaml
    idk = METHODS.get("idk").parse({})
    assert isinstance(idk, IdkParams)
    assert (idk.beta, idk.refusals) == (0.1, None)  # DPO.yaml; None = TOFU's refusals
    params = METHODS.get("rmu").parse({})
    assert isinstance(params, RMUParams)
    assert (params.steering_coefficient, params.alpha, params.layer, params.trained_layers) == (None, 1200, None, None)
    # Adaptive RMU (Dang et al., arXiv 2408.06223): c = 5 * the mean hidden-state norm; all linear layers trained.
    assert (params.steering_scale, params.trained_modules) == (5.0, "all")
    random_label = METHODS.get("random_label").parse({})
    assert isinstance(random_label, RandomLabelParams)
    assert (random_label.stopping, random_label.stop_rule()) == ("target", "target")


@pytest.mark.parametrize(
    ("name", "params", "needs_retain"),
    [
        ("gradient_ascent", {}, False),
        ("gradient_ascent", {"retain_kl_weight": 0.5}, True),
        ("random_label", {}, False),
        ("grad_diff", {}, True),
        ("grad_diff", {"alpha": 0}, False),
        ("npo", {"alpha": 0, "retain_kl_weight": 1}, True),
        ("simnpo", {"alpha": 0}, False),
        ("idk", {}, True),
        ("rmu", {}, True),
        ("rmu", {"alpha": 0}, False),
    ],
)
def test_which_params_need_retain_rows(name: str, params: dict, needs_retain: bool) -> None:
    spec = METHODS.get(name)
    assert spec.needs_retain(spec.parse(params)) is needs_retain


def test_kinds() -> None:
    assert METHODS.get("idk").kinds == ("choice", "qa")
    for name in ("grad_diff", "npo", "simnpo", "rmu"):
        assert METHODS.get(name).kinds == ("choice", "qa", "text")


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("grad_diff", {"gamma": 0}),
        ("grad_diff", {"alpha": -1}),
        ("grad_diff", {"retain_loss": "mse"}),
        ("npo", {"beta": 0}),
        ("simnpo", {"delta": -1}),
        ("idk", {"refusals": []}),
        ("idk", {"refusals": [""]}),
        ("rmu", {"steering_coefficient": 0}),
        ("rmu", {"steering_scale": 0}),
        ("rmu", {"trained_modules": "up_proj"}),
        ("random_label", {"stopping": "budget"}),  # a budget is max_steps steps
        ("random_label", {"stopping": "heldout"}),
        ("rmu", {"trained_layers": []}),
        ("rmu", {"trained_layers": [1, 1]}),
        ("rmu", {"layer": 3, "trained_layers": [4]}),
        # Projection and RNA act on a retain term; plain gradient ascent has none unless retain-KL is on.
        ("gradient_ascent", {"project_gradients": True}),
        ("gradient_ascent", {"rna_noise_std": 0.1}),
        ("npo", {"alpha": 0, "project_gradients": True}),
        ("gradient_ascent", {"rna_noise_std": -1, "retain_kl_weight": 1}),
    ],
)
def test_bad_params_are_rejected(name: str, bad: dict) -> None:
    with pytest.raises(ValidationError):
        METHODS.get(name).parse(bad)


def test_relative_layer_is_7_of_32() -> None:
    assert [relative_layer(n) for n in (32, 30, 24, 2, 1)] == [7, 7, 5, 0, 0]


@pytest.mark.parametrize(
    ("params", "n_layers", "layers"),
    [
        ({}, 32, [5, 6, 7]),  # Li et al.: layer 7 of Zephyr-7B, layers 5-7 trained
        ({}, 30, [5, 6, 7]),  # SmolLM2-135M
        ({}, 2, [0]),
        ({"layer": 1}, 2, [0, 1]),
        ({"layer": 5, "trained_layers": [5, 2]}, 32, [2, 5]),
    ],
)
def test_rmu_trained_layers(params: dict, n_layers: int, layers: list[int]) -> None:
    parsed = RMUParams.model_validate(params)
    assert parsed.adapted_layers(n_layers) == layers


def test_rmu_layers_must_exist_and_trained_layers_must_reach_the_layer() -> None:
    with pytest.raises(ValueError, match="does not exist"):
        RMUParams.model_validate({"layer": 2}).adapted_layers(2)
    with pytest.raises(ValueError, match="cannot change its output"):
        RMUParams.model_validate({"trained_layers": [1]}).adapted_layers(2)  # a 2-block LM's default layer is 0


def test_only_rmu_restricts_the_lora_layers() -> None:
    for name in METHODS.names():
        if name != "rmu":
            assert METHODS.get(name).parse({}).adapted_layers(32) is None


@pytest.mark.parametrize("name", METHODS.names())
def test_defaults_parse(name: str) -> None:
    params = METHODS.get(name).parse({})
    assert isinstance(params, MethodParams)
    assert params.max_steps is None
    assert params.stop_at_target is True
    assert set(type(params).model_fields) >= COMMON_FIELDS


@pytest.mark.parametrize(
    "bad",
    [
        {"unknown": 1},
        {"learning_rate": 0},
        {"learning_rate": -1e-4},
        {"epochs": 0},
        {"max_steps": 0},
        {"batch_size": 0},
        {"lora_rank": 0},
        {"target_tolerance": 1.5},
        {"epochs": "many"},
    ],
)
@pytest.mark.parametrize("name", METHODS.names())
def test_bad_shared_params_are_rejected(name: str, bad: dict) -> None:
    with pytest.raises(ValidationError):
        METHODS.get(name).parse(bad)


def test_params_are_parsed_with_types() -> None:
    params = METHODS.get("random_label").parse({"learning_rate": "0.001", "max_steps": 7, "stop_at_target": False})
    assert params.learning_rate == 0.001
    assert params.max_steps == 7
    assert params.stop_at_target is False


@pytest.mark.parametrize("name", METHODS.names())
def test_json_schema_has_the_shared_fields(name: str) -> None:
    spec = METHODS.get(name)
    schema = spec.json_schema()
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) >= COMMON_FIELDS
    for field, prop in schema["properties"].items():
        assert prop.get("description"), field
        assert "default" in prop, field
    assert schema["properties"]["learning_rate"]["exclusiveMinimum"] == 0
    assert spec.description


def test_gradient_ascent_description_states_the_loss() -> None:
    assert "-NLL of the true target" in METHODS.get("gradient_ascent").description


def _layer_fields(params_model: type[BaseModel]) -> list[str]:
    return [name for name in params_model.model_fields if "layer" in name]


def test_every_param_naming_a_layer_is_listed_for_the_api_to_check() -> None:
    """A new `*layer*` param must appear in named_layers, or the API would accept a block the base model lacks."""
    specs = [(f"method {name}", spec.params_model) for name, spec in METHODS.items()]
    specs += [(f"attack {name}", spec.params_model) for name, spec in ATTACKS.items()]
    checked = set()
    for what, params_model in specs:
        for field in _layer_fields(params_model):
            annotation = str(params_model.model_fields[field].annotation)
            value: int | list[int] = [999] if "list" in annotation else 999
            params = params_model.model_validate({field: value})
            named = params.named_layers()  # type: ignore[attr-defined]
            assert any(name.startswith(field) and layer == 999 for name, layer in named), (what, field, named)
            checked.add(field)
    assert checked == {"rna_layer", "layer", "trained_layers", "layers"}


@pytest.mark.parametrize(
    ("name", "params", "rule"),
    [
        ("random_label", {}, "target"),
        ("random_label", {"stop_at_target": False}, "budget"),
        ("random_label", {"stopping": "heldout_below_chance"}, "heldout_below_chance"),
        ("random_label", {"stopping": "budget", "max_steps": 40}, "budget"),
        ("npo", {}, "target"),
        ("npo", {"stop_at_target": False}, "budget"),
    ],
)
def test_the_stop_rule_a_run_uses(name: str, params: dict, rule: str) -> None:
    assert METHODS.get(name).parse(params).stop_rule() == rule
