"""`python -m gdx.broker start|stop|status|resolve|destroy`."""

import sys

from gdx.broker.local import main

sys.exit(main())
