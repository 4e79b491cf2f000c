"""Example configs, installed as ``bigseg.configs``: ``importlib.resources.files("bigseg.configs") / "default.yaml"``."""
