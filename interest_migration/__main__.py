"""``python -m interest_migration <command>``: see :mod:`interest_migration.cli`."""
import sys

from interest_migration.cli import main

if __name__ == "__main__":
    sys.exit(main())
