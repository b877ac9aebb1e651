import os
import time

from attune_action import get_secret


def run(hold=0):
    token = get_secret("token")
    time.sleep(hold)  # lets a test inspect the running container
    return {
        "token_length": len(token or ""),
        "token_matches": token == "s3cr3t-\u00e9\"'\\n",
        "in_environment": any(token and token in v for v in os.environ.values()),
    }
