import pytest

from lethe.registry import Registry, UnknownNameError


def test_register_and_get_in_order() -> None:
    registry: Registry[int] = Registry("thing")
    registry.register("b", 2)
    registry.register("a", 1)
    assert registry.get("a") == 1
    assert registry.names() == ["b", "a"]
    assert registry.items() == [("b", 2), ("a", 1)]
    assert "a" in registry and "c" not in registry
    assert len(registry) == 2


def test_duplicate_name_is_refused() -> None:
    registry: Registry[int] = Registry("thing")
    registry.register("a", 1)
    with pytest.raises(ValueError, match="'a' is already registered"):
        registry.register("a", 2)
    assert registry.get("a") == 1


def test_unknown_name_names_the_allowed_ones() -> None:
    registry: Registry[int] = Registry("thing")
    registry.register("a", 1)
    registry.register("b", 2)
    with pytest.raises(UnknownNameError) as raised:
        registry.get("c")
    error = raised.value
    assert isinstance(error, KeyError)
    assert (error.kind, error.name, error.allowed) == ("thing", "c", ["a", "b"])
    assert str(error) == "unknown thing 'c'; allowed: a, b"
