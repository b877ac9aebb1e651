def run():
    return "run was called, not greet"


def greet(name):
    return f"hello {name}"
