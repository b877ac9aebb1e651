def run(megabytes=1024):
    held = []
    for _ in range(megabytes // 16):
        held.append(b"\x01" * (16 * 1024 * 1024))  # touched pages, not lazy zero pages
    return len(held)
