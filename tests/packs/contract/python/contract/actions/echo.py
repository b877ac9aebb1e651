def run(**parameters):
    return parameters
