"""The suppression list: the one place that keeps the minimal identifier of every suppressed
person (normalized email, E.164 phone, normalized postal address), encrypted at rest.

``entries`` seals and opens values (key ring from settings); intake writes them
(``services/intake/store.py``); ``identifiers`` reads them in the clear, only for what must
send an identifier to a destination; ``rotate`` re-encrypts under the current key;
``erase`` removes a person; ``backfill`` lists requests recorded before the list existed.
"""
