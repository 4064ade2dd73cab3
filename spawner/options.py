"""The user options of a GPU server, checked the same way for the form and the REST API."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .gpu import Vendor

ALLOWED_KEYS = frozenset({"gpu_vendor", "gpu_count"})


class InvalidOptions(ValueError):
    """User options that cannot be honoured; ``str()`` is the bilingual message for the user."""

    def __init__(self, message: str, *, reason: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class GPURequest:
    vendor: Vendor
    count: int

    @classmethod
    def from_user_options(cls, options: dict, max_count: int) -> GPURequest:
        if not isinstance(options, dict):
            raise InvalidOptions(
                "選項格式錯誤 / user options must be a JSON object", reason="options"
            )
        unknown = sorted(set(options) - ALLOWED_KEYS)
        if unknown:
            raise InvalidOptions(
                f"不支援的選項 / unsupported option(s): {', '.join(map(str, unknown))}",
                reason="options",
            )
        raw_vendor = options.get("gpu_vendor")
        try:
            vendor = Vendor(raw_vendor)
        except ValueError:
            raise InvalidOptions(
                f"不支援的 GPU 廠牌 / unknown GPU vendor {raw_vendor!r}: choose nvidia or amd",
                reason="vendor",
            ) from None
        count = _parse_count(options.get("gpu_count"))
        if count < 1:
            raise InvalidOptions("GPU 數量至少為 1 / at least 1 GPU", reason="gpu_count")
        if count > max_count:
            raise InvalidOptions(
                f"GPU 數量超過計畫上限 {max_count} / {count} GPUs is over your project's "
                f"limit of {max_count} per server",
                reason="gpu_count",
            )
        return cls(vendor, count)

    def as_user_options(self) -> dict:
        return {"gpu_vendor": self.vendor.value, "gpu_count": self.count}


def _parse_count(value: object) -> int:
    # bool is an int in Python; "2" comes from forms; 2.0 and "2.5" are refused
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    # \d is what int() parses; str.isdigit() also takes "²", and lstrip("-") took "--2"
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value.strip())
    raise InvalidOptions(
        f"GPU 數量必須是整數 / gpu_count must be an integer, got {value!r}", reason="gpu_count"
    )


def options_from_form(formdata: dict[str, list[str]]) -> dict:
    """Turn the spawn form's fields into user options (checked later, in one place)."""
    return {key: formdata[key][0] for key in ALLOWED_KEYS if formdata.get(key)}
