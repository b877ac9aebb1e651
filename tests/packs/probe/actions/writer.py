import os


def run():
    outcome = {}
    for path in ("/tmp/ok.txt", "/etc/evil", "/opt/attune/pack/evil", "/opt/attune/venv/evil", "/evil"):
        try:
            with open(path, "w") as handle:
                handle.write("x")
            outcome[path] = "written"
        except OSError as exc:
            outcome[path] = type(exc).__name__
    outcome["uid"] = os.getuid()
    return outcome
