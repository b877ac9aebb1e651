"""Importable from actions: `from attune_action import get_secret, parameters, secrets`.

The wrapper replaces this module with the execution's own values before the action is loaded;
this file only makes the name resolvable for linters and for running an action outside attune.
"""

import types

parameters = types.MappingProxyType({})
secrets = types.MappingProxyType({})
execution_id = None


def get_secret(name, default=None):
    return secrets.get(name, default)
