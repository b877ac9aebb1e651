import sys
import time


def run(ticks=5, every=0.5):
    for i in range(ticks):
        print(f"tick {i}", flush=True)
        print(f"tock {i}", file=sys.stderr, flush=True)
        time.sleep(every)
    return {"ticks": ticks}
