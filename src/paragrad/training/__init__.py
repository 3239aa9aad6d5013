"""The round loop and its parts: ``train`` (trainer) chooses the settings, starts the
engine and hands the rounds to ``rounds``; strategies say what a worker computes and how
the coordinator combines it; checkpoints, elastic runs, gradient compression, energy, and
the model acceleration built on training (``compress``, ``distill``)."""
