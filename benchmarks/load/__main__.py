"""`python -m benchmarks.load`, also how the run starts each load generator (`--client`)."""

from benchmarks.load.cli import main

if __name__ == "__main__":
    main()
