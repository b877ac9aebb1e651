"""Services: the dependency manager, base images and (later) the runner and pruner, on top of the
pure core and the engine layer."""
