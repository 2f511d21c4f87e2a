"""Risk factors, score and level; the private-address check against Python's ipaddress."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loginpipe.core import risk
from loginpipe.core.addresses import is_private_ip

CLEAN = {"distinct_ips_for_user": 1, "users_on_device": 1, "app_major": 3, "newest_major": 3,
         "local_hour": 14, "ip": "8.8.4.4"}


def test_a_clean_login_has_no_factor() -> None:
    assert risk.assess(**CLEAN) == (0, "low", ())


@pytest.mark.parametrize(("change", "factor"), [
    ({"distinct_ips_for_user": 2}, risk.MULTI_IP_USER),
    ({"users_on_device": 3}, risk.SHARED_DEVICE),
    ({"app_major": 2}, risk.LEGACY_APP_VERSION),
    ({"local_hour": 0}, risk.ODD_HOUR),
    ({"local_hour": 4}, risk.ODD_HOUR),
    ({"ip": "192.168.1.20"}, risk.PRIVATE_IP),
    ({"ip": "fd00::1"}, risk.PRIVATE_IP),
])
def test_each_factor_fires_alone(change: dict, factor: str) -> None:
    score, level, factors = risk.assess(**{**CLEAN, **change})
    assert factors == (factor,)
    assert score == risk.WEIGHTS[factor]
    assert level == risk.level_of(score)


@pytest.mark.parametrize("change", [{"local_hour": 5}, {"local_hour": 23}, {"local_hour": None},
                                    {"app_major": 4}, {"ip": "2001:4860::8888"}])
def test_near_misses_do_not_fire(change: dict) -> None:
    assert risk.assess(**{**CLEAN, **change}) == (0, "low", ())


def test_scores_add_up_and_set_the_level() -> None:
    every = {"distinct_ips_for_user": 5, "users_on_device": 2, "app_major": 1, "newest_major": 3,
             "local_hour": 3, "ip": "10.1.2.3"}
    score, level, factors = risk.assess(**every)
    assert factors == tuple(risk.WEIGHTS) and score == min(100, sum(risk.WEIGHTS.values()))
    assert level == "high"
    assert risk.level_of(risk.MEDIUM_FROM - 1) == "low" and risk.level_of(risk.MEDIUM_FROM) == "medium"
    assert risk.level_of(risk.HIGH_FROM) == "high"


def _reference(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return not address.is_global or address.is_multicast


def test_private_check_agrees_with_ipaddress_on_every_first_octet() -> None:
    for first in range(256):
        for rest in ("0.0.0", "1.2.3", "64.0.1", "254.1.1", "168.0.1", "16.5.5", "0.2.1", "18.0.1",
                     "51.100.7", "0.113.9", "88.99.1", "255.255.255"):
            ip = f"{first}.{rest}"
            assert is_private_ip(ip) == _reference(ip), ip


@given(st.ip_addresses())
def test_private_check_agrees_with_ipaddress(address) -> None:
    assert is_private_ip(str(address)) == _reference(str(address))
