"""`python -m veeksha.uploader RUN_DIR`: what `veeksha-run` starts after a run with wandb.enabled."""

from veeksha.uploader.cli import main

if __name__ == "__main__":
    main()
