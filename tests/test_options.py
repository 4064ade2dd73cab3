"""User options of a GPU server: one check for the spawn form and the REST API."""

from __future__ import annotations

import pytest

from spawner.gpu import Vendor
from spawner.options import GPURequest, InvalidOptions, options_from_form


def request(options, max_count: int = 2) -> GPURequest:
    return GPURequest.from_user_options(options, max_count)


def refusal(options, max_count: int = 2) -> InvalidOptions:
    with pytest.raises(InvalidOptions) as refused:
        request(options, max_count)
    return refused.value


@pytest.mark.parametrize(
    ("options", "vendor", "count"),
    [
        ({"gpu_vendor": "nvidia", "gpu_count": 1}, Vendor.NVIDIA, 1),
        ({"gpu_vendor": "amd", "gpu_count": 2}, Vendor.AMD, 2),
        ({"gpu_vendor": "nvidia", "gpu_count": "2"}, Vendor.NVIDIA, 2),  # from a form
        ({"gpu_vendor": "amd", "gpu_count": " 1 "}, Vendor.AMD, 1),
    ],
)
def test_accepted(options, vendor, count):
    assert request(options) == GPURequest(vendor, count)


def test_the_limit_itself_is_allowed():
    assert request({"gpu_vendor": "nvidia", "gpu_count": 8}, max_count=8).count == 8


def test_round_trip_through_user_options():
    original = GPURequest(Vendor.AMD, 2)
    assert original.as_user_options() == {"gpu_vendor": "amd", "gpu_count": 2}
    assert request(original.as_user_options()) == original


@pytest.mark.parametrize("vendor", ["intel", None, 1, "", "NVIDIA", " nvidia", "cuda", ["amd"]])
def test_unknown_vendor_refused(vendor):
    refused = refusal({"gpu_vendor": vendor, "gpu_count": 1})
    assert refused.reason == "vendor"
    assert "choose nvidia or amd" in str(refused)


def test_missing_vendor_refused():
    assert refusal({"gpu_count": 1}).reason == "vendor"


@pytest.mark.parametrize("count", [0, -1, "0", "-1", -5])
def test_count_below_one_refused(count):
    refused = refusal({"gpu_vendor": "nvidia", "gpu_count": count})
    assert refused.reason == "gpu_count"
    assert "at least 1 GPU" in str(refused)


@pytest.mark.parametrize(("count", "limit"), [(3, 2), ("3", 2), (2, 1), (10**12, 8)])
def test_count_over_the_project_limit_refused(count, limit):
    refused = refusal({"gpu_vendor": "amd", "gpu_count": count}, max_count=limit)
    assert refused.reason == "gpu_count"
    assert f"limit of {limit} per server" in str(refused)


@pytest.mark.parametrize(
    "count",
    [
        True,  # bool is an int in Python, but not a GPU count
        False,
        1.5,
        2.0,
        "1.5",
        "2.0",
        "",
        "two",
        None,
        [2],
        "1e0",
        "+2",
        "1_0",
        "--2",  # used to reach int() and raise a bare ValueError
        "²",  # str.isdigit() is true for it, int() is not
    ],
)
def test_count_that_is_not_an_integer_refused(count):
    refused = refusal({"gpu_vendor": "nvidia", "gpu_count": count})
    assert refused.reason == "gpu_count"
    assert "must be an integer" in str(refused)


def test_missing_count_refused():
    assert refusal({"gpu_vendor": "nvidia"}).reason == "gpu_count"


@pytest.mark.parametrize("extra", ["image", "cmd", "profile", "gpu_devices"])
def test_extra_keys_refused(extra):
    refused = refusal({"gpu_vendor": "nvidia", "gpu_count": 1, extra: "x"})
    assert refused.reason == "options"
    assert extra in str(refused)


def test_all_extra_keys_are_named_sorted():
    refused = refusal({"gpu_vendor": "nvidia", "gpu_count": 1, "image": "x", "cmd": "sh"})
    assert "unsupported option(s): cmd, image" in str(refused)


@pytest.mark.parametrize("options", [None, [], "nvidia", 2])
def test_options_that_are_not_an_object_refused(options):
    assert refusal(options).reason == "options"


def test_messages_are_bilingual():
    for options in (
        {"gpu_vendor": "intel", "gpu_count": 1},
        {"gpu_vendor": "nvidia", "gpu_count": 0},
        {"gpu_vendor": "nvidia", "gpu_count": 3},
        {"gpu_vendor": "nvidia", "gpu_count": "x"},
        {"gpu_vendor": "nvidia", "gpu_count": 1, "image": "x"},
    ):
        zh, en = str(refusal(options)).split(" / ", 1)
        assert not zh.isascii()  # Chinese first
        assert en.isascii() and len(en) > 10  # then English


# --- the spawn form -----------------------------------------------------------------------


def test_options_from_form_takes_the_first_value_of_each_known_field():
    form = {"gpu_vendor": ["amd", "nvidia"], "gpu_count": ["2"], "_xsrf": ["token"]}
    options = options_from_form(form)
    assert options == {"gpu_vendor": "amd", "gpu_count": "2"}
    assert request(options) == GPURequest(Vendor.AMD, 2)


def test_options_from_form_drops_unknown_and_empty_fields():
    assert options_from_form({"image": ["evil"], "gpu_count": []}) == {}
    assert options_from_form({}) == {}


def test_options_from_form_with_a_missing_field_is_refused_later():
    options = options_from_form({"gpu_count": ["1"]})
    assert options == {"gpu_count": "1"}
    assert refusal(options).reason == "vendor"


def test_options_from_form_with_a_fractional_count_is_refused_later():
    options = options_from_form({"gpu_vendor": ["nvidia"], "gpu_count": ["1.5"]})
    assert refusal(options).reason == "gpu_count"
