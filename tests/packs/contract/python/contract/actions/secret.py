import os

from attune_action import get_secret

REMEMBERED = []
STASHES = ("/tmp/contract-stash", "/dev/shm/contract-stash")


def run(stash=False):
    token = get_secret("token")
    # What earlier executions left behind, looked for before this one leaves anything.
    found = [path for path in STASHES if os.path.exists(path)]
    result = {
        "token": token,
        "remembered": list(REMEMBERED),
        "found": found,
        "in_environment": bool(token) and any(token in value for value in os.environ.values()),
    }
    if stash:
        REMEMBERED.append(token)
        for path in STASHES:
            with open(path, "w") as handle:
                handle.write(token or "")
    return result
