"""One module per `medops` verb: generate, validate, preprocess, train, evaluate, report, promote, predict.

Each is plain wiring of library pieces; where two families differ it calls the family's hook
(:class:`medops.families.Family`). Verb modules never import each other and never name a family.
"""
