import time


def run(seconds=30):
    time.sleep(seconds)
    return {"slept": seconds}
