"""The service layer: what a caller asked, checked against its key and the limits, run on the
engine and encoded; shared by the routes, their fast answer, named queries and /sql."""
