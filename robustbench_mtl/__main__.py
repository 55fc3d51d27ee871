"""`python -m robustbench_mtl` = the `robustbench-mtl` command."""
from .cli import main

main()
