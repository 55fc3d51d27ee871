"""An example robustbench-mtl plugin: one algorithm, one objective, one dataset and one backbone."""
__version__ = "0.1.0"
