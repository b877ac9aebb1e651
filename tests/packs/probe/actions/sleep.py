import time


def run(seconds=30):
    started = time.time()
    time.sleep(seconds)
    return {"slept": seconds, "started": started, "ended": time.time()}
