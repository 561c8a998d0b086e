"""ICP filing numbers: well-formed ones pass, each broken rule is named."""

import pytest

from controller.icp import icp_problem


@pytest.mark.parametrize("text", ["京ICP备12345678号-1", "沪ICP备2021012345号", "京ICP证030173号", "粤ICP备05008891号-12",
                                  "黔ICP备2022000001号-3", "陇ICP备1号"])
def test_well_formed_filings_pass(text):
    assert icp_problem(text) is None


@pytest.mark.parametrize("text, rule", [
    ("", "required"),
    ("ICP备12345678号", "province abbreviation"),
    ("美ICP备12345678号", "province abbreviation"),
    ("京ICP12345678号", "'ICP备' (filing) or 'ICP证'"),
    ("京icp备12345678号", "'ICP备' (filing) or 'ICP证'"),
    ("京ICP备号", "digits"),
    ("京ICP备１２３号", "digits"),            # full-width digits are not digits here
    ("京ICP备12345678", "followed by '号'"),
    ("京ICP备12345678号-", "site suffix"),
    ("京ICP备12345678号-0", "site suffix"),
    ("京ICP备12345678号1", "site suffix"),
    ("京ICP备1234567890123号", "at most 12"),
    (" 京ICP备12345678号", "blanks"),
])
def test_broken_filings_name_the_rule(text, rule):
    problem = icp_problem(text)
    assert problem is not None and rule in problem
