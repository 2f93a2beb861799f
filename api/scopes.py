"""API-key scopes: which scope each operation needs, declared in the OpenAPI spec that the request gate enforces.

Three scopes. `read`: a tenant's GET (and HEAD) operations. `submit`: a tenant's operations that change something
(POST, PUT, PATCH, DELETE: uploads, forget requests, audits, cancels, deletions). `admin`: the installation's
operations (base models, API keys, signing keys), which belong to no tenant. `admin` implies neither of the others:
an operator's key manages the installation and reads no tenant's data unless it also holds `read` (least privilege:
a key leaked from a deployment script exposes no forget set).

A tenant's operation (one that depends on `TenantDep` or `WritingTenantDep`) needs no declaration of its own: its
scope follows from its method, so a route added later gets the right one. An operation that names its scopes
(`Security(..., scopes=[...])`, as `AdminDep` does) keeps them.
"""

from typing import Any, Literal, get_args

Scope = Literal["read", "submit", "admin"]
SCOPES: tuple[str, ...] = get_args(Scope)
# What a tenant's key holds unless made with others (and what the keys of before scopes, `["*"]`, became).
TENANT_SCOPES: tuple[str, ...] = ("read", "submit")

_READING_METHODS = {"get", "head"}


def scope_of_method(method: str) -> str:
    """The scope a tenant's operation with this HTTP method needs."""
    return "read" if method.lower() in _READING_METHODS else "submit"


def declare_scopes(spec: dict[str, Any]) -> dict[str, Any]:
    """`spec` with the scope of every keyed operation in its security requirement (OpenAPI 3.1 lets an apiKey
    scheme's requirement list role names) and its 403 declared; in place, idempotent."""
    for path_item in spec.get("paths", {}).values():
        for method, operation in path_item.items():
            requirements = operation.get("security")
            if not requirements:
                continue
            for requirement in requirements:
                for scheme, scopes in requirement.items():
                    if not scopes:
                        requirement[scheme] = [scope_of_method(method)]
            needed = sorted({scope for requirement in requirements for scope in next(iter(requirement.values()))})
            _declare_forbidden(operation, needed)
    return spec


_FORBIDDEN_MARK = "forbidden:"


def _declare_forbidden(operation: dict[str, Any], needed: list[str]) -> None:
    responses = operation.setdefault("responses", {})
    description = (
        f"{_FORBIDDEN_MARK} the API key lacks the {' and '.join(needed)} scope this operation needs; `detail` names "
        "it and the scopes the key has."
    )
    existing = responses.get("403")
    if existing is None:
        responses["403"] = {
            "description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
        }
    elif _FORBIDDEN_MARK not in existing["description"]:
        existing["description"] = f"{description} {existing['description']}"
