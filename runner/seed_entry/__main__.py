"""`python -m veeksha.benchmark --benchmark-config-from-file FILE` == `veeksha-run --config FILE`."""

from veeksha.runner.cli import seed_main

if __name__ == "__main__":
    seed_main()
