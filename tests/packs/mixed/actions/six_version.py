import importlib.util
import platform

import six


def run():
    # Its own image: six is there, Node's packages are not (node_modules is the other image's).
    return {
        "six": six.__version__,
        "python": platform.python_version(),
        "has_node": importlib.util.find_spec("lodash") is not None,
    }
