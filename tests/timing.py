"""One unit for every test timeout, so a slow CI box can scale them all at once."""

import os

MS = 0.001 * float(os.environ.get("MEDIASERVER_TEST_TIMEOUT_FACTOR", "1"))
