import sys

from customer_service.cli import main

sys.exit(main())
