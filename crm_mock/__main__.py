"""`python -m crm_mock`: the same as the `crm-mock` command."""

import sys

from crm_mock.cli import main

if __name__ == "__main__":
    sys.exit(main())
