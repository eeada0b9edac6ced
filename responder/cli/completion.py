"""`responder completion bash|zsh`: the shell code that completes `responder` commands and options.

    source <(responder completion bash)                       # now, or in ~/.bashrc
    responder completion zsh > "${fpath[1]}/_responder"       # zsh, once

The shell code calls `responder` back with the words typed so far; `main` hands those calls to argcomplete,
which answers from the same argparse parser that runs the commands.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("completion", help="print shell completion code (bash or zsh)")
    parser.add_argument("shell", choices=["bash", "zsh"])
    parser.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    from argcomplete.shell_integration import shellcode

    print(shellcode(["responder"], shell=args.shell))
    return 0
