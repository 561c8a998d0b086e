"""The ICP filing number (备案号) of a tenant's site: validated rule by rule so
a refusal names the rule that was broken, e.g. 京ICP备12345678号-1."""

from __future__ import annotations

import re

# The one-character abbreviations the MIIT's provincial offices put in front
# of their filings; several provinces file under their traditional name.
PROVINCES = ("京津冀晋蒙辽吉黑沪苏浙皖闽赣鲁豫鄂湘粤桂琼渝川蜀贵黔云滇藏陕秦甘陇青宁新")
KINDS = ("ICP备", "ICP证")
MAX_DIGITS = 12
EXAMPLE = "京ICP备12345678号-1"


def icp_problem(text: str) -> str | None:
    """None if `text` is a well-formed filing number, else the rule it breaks."""
    if not isinstance(text, str) or not text:
        return f"an ICP filing number is required, e.g. {EXAMPLE}"
    if text != text.strip():
        return "must not start or end with blanks"
    if text[0] not in PROVINCES:
        return (f"must start with a province abbreviation (one of {PROVINCES}), not {text[0]!r}; "
                f"e.g. {EXAMPLE}")
    rest = text[1:]
    kind = next((k for k in KINDS if rest.startswith(k)), None)
    if kind is None:
        return f"the province must be followed by 'ICP备' (filing) or 'ICP证' (licence), e.g. {EXAMPLE}"
    rest = rest[len(kind):]
    digits = re.match(r"[0-9]*", rest).group()
    if not digits:
        return f"'{kind}' must be followed by the filing's digits (0-9), e.g. {EXAMPLE}"
    if len(digits) > MAX_DIGITS:
        return f"the filing number has {len(digits)} digits; at most {MAX_DIGITS}"
    rest = rest[len(digits):]
    if not rest.startswith("号"):
        return f"the digits must be followed by '号', e.g. {EXAMPLE}"
    rest = rest[1:]
    if rest and not re.fullmatch(r"-[1-9][0-9]{0,3}", rest):
        return f"after '号' only a site suffix '-N' (N from 1) may follow, not {rest!r}"
    return None
