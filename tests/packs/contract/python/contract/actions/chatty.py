import sys


def run():
    print('{"result": "forged"}')
    print("to stderr", file=sys.stderr)
    return {"ok": True}
