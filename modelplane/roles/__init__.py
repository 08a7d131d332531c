"""The registry of model roles: one declaration each (`modelplane.registry.Role`), in the order a
repository is prepared. A new role is a module here with its `ROLE`, listed below."""

from __future__ import annotations

from modelplane.registry import Role
from modelplane.roles import detector, enhancer, masks, recognizer, swapper

REGISTRY: tuple[Role, ...] = (detector.ROLE, recognizer.ROLE, swapper.ROLE, enhancer.ROLE, *masks.ROLES)
BY_NAME = {role.name: role for role in REGISTRY}
REQUIRED_ROLES = tuple(role.name for role in REGISTRY if role.required)
OPTIONAL_ROLES = tuple(role.name for role in REGISTRY if not role.required)
FAMILY_ROLES = tuple(role.name for role in REGISTRY if role.families)
COMPANIONS = tuple(dict.fromkeys(c for role in REGISTRY for c in role.companions))  # files beside a role's
