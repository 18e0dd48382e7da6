"""`python -m study [--out docs] [--quick]`: the same as `tmirror figures`."""
import sys

from conformance.cli import main

sys.exit(main(["figures", *sys.argv[1:]]))
