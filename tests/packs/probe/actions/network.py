import socket


def run(host="pypi.org", port=443):
    try:
        with socket.create_connection((host, port), timeout=5):
            return {"connected": True}
    except OSError as exc:
        return {"connected": False, "error": f"{type(exc).__name__}: {exc}"}
