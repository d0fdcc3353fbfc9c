"""``python -m bench [--quick] [--only NAME ...]``: run the benchmarks (see bench/run.py)."""
from bench.run import main

main()
