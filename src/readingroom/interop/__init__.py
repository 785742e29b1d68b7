"""Interoperability: HL7 v2 over MLLP, FHIR R4, the durable outbox, forwarding and priors,
order and identity reconciliation, procedure normalisation, site go-live validation.

The edges (``hl7.py`` the MLLP listener, ``fhir.py`` the ``/fhir`` router,
``api.py`` the admin routes) parse and format; the service modules hold the
rules and work on a SQLAlchemy session. ``wiring.py`` is the one place that
plugs this package into ``serve`` (routers, background jobs, listeners).
"""
