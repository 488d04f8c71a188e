"""``python -m search.campaign``: see ``search.campaign.cli``."""

import sys

from search.campaign.cli import main

sys.exit(main())
