"""``python -m cadagrad``: the command line, ``demo`` and ``bench`` (the work lives in demo/, bench.py)."""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cadagrad",
        description="cadagrad: AdaGrad and SGD steps in place on NumPy arrays.",
    )
    commands = parser.add_subparsers(dest="command", metavar="{demo,bench}")
    demo = commands.add_parser(
        "demo", help="AdaGrad against SGD, and l1 sparsity, on small problems: a text report and PNG figures",
        description="Run the six experiments (five AdaGrad against SGD, one on l1 sparsity), print what "
                    "they measured and write PNG figures (needs matplotlib: pip install 'cadagrad[demo]').",
    )
    demo.add_argument("--out", metavar="DIR",
                      help="directory for the figures, created if missing (default: ./cadagrad-demo/); "
                           "always the same six file names, 1_quadratic_paths.png to 6_l1_sparsity.png")
    demo.add_argument("--no-plots", action="store_true", help="print the report only, write no figures")
    commands.add_parser(
        "bench", add_help=False,
        help="time cadagrad's steps against a memory-bound ceiling, NumPy and torch "
             "(python -m cadagrad bench --help)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if argv and argv[0] == "bench":
        from .bench import main as bench_main

        return bench_main(argv[1:])
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from .demo import run_demo

    print(run_demo(args.out, plots=not args.no_plots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
