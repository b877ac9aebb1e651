import os


def run(megabytes=8):
    chunk = b"y" * (1024 * 1024)
    for _ in range(megabytes):
        os.write(1, chunk)
        os.write(2, chunk)
    return {"wrote_megabytes": megabytes}
