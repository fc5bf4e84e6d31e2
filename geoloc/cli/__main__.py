"""``python -m geoloc.cli``."""

from geoloc.cli.main import main

main()
