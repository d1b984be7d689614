"""The naive baseline, by hand: DeepDream with the whole image in one float32 array.

    python profiling/naive_dream.py INPUT OUT.jpg --config impressionist [--set KEY=VALUE]

The code lives in gigadream/baseline.py, so that ``gigadream profile`` can run it beside every
profiled run (installed packages have no profiling/ folder); this script is the same thing.
"""
import sys

from gigadream.baseline import main

if __name__ == "__main__":
    sys.exit(main())
