import sys

from customer_service.launch import main

sys.exit(main())
