def run(message="boom"):
    raise ValueError(message)
