"""The columns of the customer directory's CSV file (services/directory/csv_format.py).

Apart from ``csv_format`` (which loads the domain's validation) so that
``optout customers import --help`` lists them without importing it (README, "Process start-up").
"""

from __future__ import annotations

CUSTOMER_ID = "customer_id"
ADDRESS_COLUMNS = (
    "name",
    "address_line1",
    "address_line2",
    "address_line3",
    "city",
    "region",
    "postal_code",
    "country",
)
COLUMNS = (CUSTOMER_ID, "email", "phone", *ADDRESS_COLUMNS)
