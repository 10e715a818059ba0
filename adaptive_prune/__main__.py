"""Command line: ``python -m adaptive_prune {demo,info}``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m adaptive_prune",
        description="Adaptive visual-token pruning for multi-image multimodal LLMs.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{demo,info}")
    from .cli import demo

    demo.add_arguments(sub.add_parser("demo", help="run the method on the bundled real tokens"))
    sub.add_parser("info", help="versions, devices, backends and which one each op uses")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo.run(args)
    if args.command == "info":
        from .cli.info import main as info_main

        return info_main()
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
