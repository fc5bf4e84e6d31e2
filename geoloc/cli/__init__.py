"""The ``geoloc`` command line: a thin layer over the library (no logic of its own)."""
