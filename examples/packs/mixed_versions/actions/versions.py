import platform

import requests


def run(greeting="hello"):
    return {"greeting": greeting, "python": platform.python_version(), "requests": requests.__version__}
