"""US state codes: their Census Bureau region and their time zone.

Regions are the four US Census regions. A state that spans two time zones gets the zone where
most of its people live (Texas: Central; Tennessee: Central; Kentucky: Eastern; Florida:
Eastern; Idaho: Mountain, ...). Every zone here has whole-hour offsets and changes them on a
whole UTC hour, which ``enrich.local_hour`` relies on.
"""

from __future__ import annotations

NORTHEAST, MIDWEST, SOUTH, WEST, OTHER = "Northeast", "Midwest", "South", "West", "Other"
REGIONS = (NORTHEAST, MIDWEST, SOUTH, WEST, OTHER)

_EASTERN, _CENTRAL, _MOUNTAIN = "America/New_York", "America/Chicago", "America/Denver"
_PACIFIC, _ARIZONA = "America/Los_Angeles", "America/Phoenix"

# state code -> (region, IANA time zone)
US_STATES: dict[str, tuple[str, str]] = {
    # Northeast
    "CT": (NORTHEAST, _EASTERN), "ME": (NORTHEAST, _EASTERN), "MA": (NORTHEAST, _EASTERN),
    "NH": (NORTHEAST, _EASTERN), "RI": (NORTHEAST, _EASTERN), "VT": (NORTHEAST, _EASTERN),
    "NJ": (NORTHEAST, _EASTERN), "NY": (NORTHEAST, _EASTERN), "PA": (NORTHEAST, _EASTERN),
    # Midwest
    "IL": (MIDWEST, _CENTRAL), "IN": (MIDWEST, "America/Indiana/Indianapolis"),
    "MI": (MIDWEST, "America/Detroit"), "OH": (MIDWEST, _EASTERN), "WI": (MIDWEST, _CENTRAL),
    "IA": (MIDWEST, _CENTRAL), "KS": (MIDWEST, _CENTRAL), "MN": (MIDWEST, _CENTRAL),
    "MO": (MIDWEST, _CENTRAL), "NE": (MIDWEST, _CENTRAL), "ND": (MIDWEST, _CENTRAL),
    "SD": (MIDWEST, _CENTRAL),
    # South
    "DE": (SOUTH, _EASTERN), "FL": (SOUTH, _EASTERN), "GA": (SOUTH, _EASTERN),
    "MD": (SOUTH, _EASTERN), "NC": (SOUTH, _EASTERN), "SC": (SOUTH, _EASTERN),
    "VA": (SOUTH, _EASTERN), "DC": (SOUTH, _EASTERN), "WV": (SOUTH, _EASTERN),
    "AL": (SOUTH, _CENTRAL), "KY": (SOUTH, "America/Kentucky/Louisville"), "MS": (SOUTH, _CENTRAL),
    "TN": (SOUTH, _CENTRAL), "AR": (SOUTH, _CENTRAL), "LA": (SOUTH, _CENTRAL),
    "OK": (SOUTH, _CENTRAL), "TX": (SOUTH, _CENTRAL),
    # West
    "AZ": (WEST, _ARIZONA), "CO": (WEST, _MOUNTAIN), "ID": (WEST, "America/Boise"),
    "MT": (WEST, _MOUNTAIN), "NV": (WEST, _PACIFIC), "NM": (WEST, _MOUNTAIN),
    "UT": (WEST, _MOUNTAIN), "WY": (WEST, _MOUNTAIN), "AK": (WEST, "America/Anchorage"),
    "CA": (WEST, _PACIFIC), "HI": (WEST, "Pacific/Honolulu"), "OR": (WEST, _PACIFIC),
    "WA": (WEST, _PACIFIC),
}

_UNKNOWN = (OTHER, None)


def region_and_zone(locale: str) -> tuple[str, str | None]:
    """(Census region, time zone) of a locale; ("Other", None) when it is not a US state code."""
    return US_STATES.get(locale, _UNKNOWN)
