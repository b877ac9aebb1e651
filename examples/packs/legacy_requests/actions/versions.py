import platform

import requests


def run(greeting="hello"):
    print("this line is the action's own output, not its result")
    return {"greeting": greeting, "python": platform.python_version(), "requests": requests.__version__}
