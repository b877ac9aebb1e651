import os
import time


def run(seconds=3):
    # Every child forks too: only the pids limit holds it.
    failures = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if os.fork() == 0:
                while True:
                    try:
                        os.fork()
                    except OSError:
                        time.sleep(0.01)
        except OSError:
            failures += 1
            time.sleep(0.01)
    return {"fork_failures": failures}
