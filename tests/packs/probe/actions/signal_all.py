"""Sends every signal it may to every process it may: the zygote of a warm container ignores what it
can; a stopped or killed zygote must make the loop destroy the container, not serve from it."""

import os
import signal


def run(stop=False):
    sent = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        for number in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT, signal.SIGHUP) + ((signal.SIGSTOP,) if stop else ()):
            try:
                os.kill(int(entry), number)
                sent.append((int(entry), int(number)))
            except OSError:
                pass
    return {"sent": len(sent)}
