"""The Hydra configs of the deepiot commands (installed as the package deepiot.configs)."""
