"""The reproduction harness, as `deepiot-reproduce` (deepiot/cli/reproduce.py) for a checkout without the console
scripts: `python scripts/reproduce.py --help`."""

from deepiot.cli.reproduce import main

if __name__ == "__main__":
    main()
