"""How the console calls an endpoint's data plane (Azure or local): the call shapes per kind of
scoring URI (scoring.py) and one short real call (probe.py)."""
