"""The built-in demo: captioned shapes (`shapes`: scenes, renderer, caption parser and checker) and the run that
trains a dVAE, a DALLE and a CLIP on them and scores the samples (`runner`, i.e. `dalle-core demo`)."""
