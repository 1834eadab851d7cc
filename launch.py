#!/usr/bin/env python
"""In-domain generation suite: one subcommand per job. Run `python launch.py SUBCOMMAND --help`.

Each subcommand is a module with HELP, add_arguments(parser) and main(args); this file only wires them.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "generate": "suite.generate_cli",
    "edit": "editing.cli",
    "3d": "generators3d.cli",
    "train": "training.cli",
    "eval": "training.eval_cli",
    "app": "app",
}


def available():
    for name, module in SUBCOMMANDS.items():
        try:
            yield name, importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name and module.startswith(err.name):
                continue  # that part of the suite is not installed in this tree
            raise


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (the flag, the problem, where the help is), exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="launch.py",
        description="Generate, edit and build 3D objects within one domain with multi-guidance diffusion "
                    "(SD1.5 + a null-text domain model). Add --preset tiny to any subcommand to run offline on "
                    "tiny random models.",
    )
    from suite.cli import add_threads_argument

    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    for name, module in available():
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        add_threads_argument(p)  # every subcommand; applied by suite.cli.run_main
        p.set_defaults(_main=module.main)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help (0) or a flag argparse refused (2, one line already printed)
        return int(done.code or 0)
    if not getattr(args, "_main", None):
        parser.print_help()
        return 2
    from suite.cli import run_main

    return run_main(args._main, args)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C after the work, as the process ends: its results are complete
        print("interrupted", file=sys.stderr)
        sys.exit(130)
