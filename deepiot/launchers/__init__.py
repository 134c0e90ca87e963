"""Hydra launchers that deepiot's sweep configs build on (configs/hydra/launcher/); they import their plugin lazily."""
