#!/usr/bin/env python3
"""Entry point from a checkout: ``python run.py COMMAND ...`` (the ``lidarseg`` command once installed).

The command line lives in ``pipeline/cli.py``; see ``python run.py --help``.
"""
import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main())
