"""The domain model, shared by every service that reasons about opt-outs.

Pure functions and records, no I/O: identifiers (``identity``), legal deadlines
(``deadlines``), validating and normalizing a request (``validation``), planning the
commands it fans out to (``planning``) and the newest-wins rule of opting out and back
in (``preferences``). Imports point down: services import the domain,
the domain imports only ``services.common`` (contract, errors, clock, codec), and
``services.common`` never imports the domain or a service.
"""
