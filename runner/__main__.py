"""`veeksha-run` (and `python -m veeksha.runner`). Light on purpose: a stop during the imports below
ends it as any other does."""

from veeksha.shared.starting import starting


def main() -> None:
    with starting("veeksha-run"):
        from veeksha.runner.cli import main as run

        run()


if __name__ == "__main__":
    main()
