"""Training of the shipped networks on phantom data sets (``cardiostream engines train``).

One module per role (``view``, ``seg``, ``flow``); shared pieces in :mod:`.common` and
:mod:`.data`. Every run is seeded and reproducible, shows a progress bar, and writes
a state dict plus a JSON record (command, seeds, held-out metrics) to the weights folder.
"""
