"""`veeksha-upload` and `python -m veeksha.uploader RUN_DIR` (what `veeksha-run` starts after a run
with wandb.enabled). Light on purpose: a stop during the imports below ends it as any other does."""

from veeksha.shared.starting import starting


def main() -> None:
    with starting("veeksha-upload"):
        from veeksha.uploader.cli import main as upload

        upload()


if __name__ == "__main__":
    main()
