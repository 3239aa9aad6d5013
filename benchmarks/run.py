"""Run paragrad's benchmarks: ``python benchmarks/run.py [--quick] [--suite NAME] [--out DIR]``.

The same suites as ``paragrad bench`` (see ``paragrad/bench/``); every figure is
reported beside a baseline measured in the same run.
"""

import sys

from paragrad.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
