"""`python -m veeksha.benchmark --benchmark-config-from-file FILE` == `veeksha-run --config FILE`."""

from veeksha.shared.starting import starting

if __name__ == "__main__":
    with starting("veeksha-run"):
        from veeksha.runner.cli import seed_main

        seed_main()
