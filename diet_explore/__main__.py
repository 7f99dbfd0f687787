"""The ``diet-explore`` console script and ``python -m diet_explore``.

A Ctrl-C while the CLI is still being imported (torch and transformers take seconds) is one line and
exit code 130, as it is once a command runs: this module imports nothing heavy before the guard."""

import sys

INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C


def entry() -> int:
    try:
        from diet_explore.cli import main

        return main()
    except KeyboardInterrupt:  # after imports, main() says more (what was kept); before, this is all there is
        print("interrupted", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(entry())
