import six


def run():
    return six.__version__
