"""Importable from actions: `from attune_action import get_secret, parameters, secrets`.

The wrapper replaces this module with the execution's own values before the action is loaded;
this file only makes the name resolvable for linters and for running an action outside attune.
"""

import types

# String annotations: this file also runs on the base images' Pythons (3.9 and up).
parameters: "types.MappingProxyType[str, object]" = types.MappingProxyType({})
secrets: "types.MappingProxyType[str, str]" = types.MappingProxyType({})
execution_id: "str | None" = None


def get_secret(name: str, default: "str | None" = None) -> "str | None":
    return secrets.get(name, default)
