"""`python -m orchestrator` runs the same command-line interface as `orchestrate`."""

from orchestrator.cli import main

if __name__ == "__main__":
    main()
