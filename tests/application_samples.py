"""A complete, valid application of each category, as a person would type it (strings)."""

from __future__ import annotations

import copy


def company(business_number: str = "22099131", **changes) -> dict:
    data = {
        "name": "新創應用有限公司",
        "business_number": business_number,
        "industry_codes": ["J62", "J63"],
        "founding_date": "2019-05-01",
        "paid_in_capital": "5,000,000",
        "representative": "王大明",
        "employees": "12",
        "address": "臺北市信義區松仁路 100 號",
        "lead": {
            "name": "林計畫",
            "title": "技術長",
            "phone": "02-2345-6789#123",
            "email": "lead@startup.example.tw",
        },
        "contact": {
            "name": "陳聯絡",
            "title": "專案經理",
            "office_phone": "(02) 2345-6789",
            "mobile": "0912-345-678",
            "email": "contact@startup.example.tw",
        },
        "profile": {
            "business_items": "軟體設計",
            "main_products": "客服對話系統",
            "sales_regions": "臺灣、日本",
        },
    }
    data.update(changes)
    return data


CONSENT = {"personal_data": True}
DECLARATIONS = {
    "registered_in_taiwan": True,
    "not_branch_office": True,
    "not_china_invested": True,
    "no_major_breach": True,
    "no_serious_violation": True,
    "truthful": True,
}

_COMMON = {
    "title": "醫療問答模型",
    "domains": ["healthcare"],
    "importance": "減少門診等候",
    "industry_application": "診所",
    "benefit": {
        "model_count": "2",
        "application_count": "1",
        "report_agreement": True,
        "demo_meeting": True,
    },
    "bonus": {
        "mou_link": "",
        "product_material_link": "https://startup.example.tw/product",
        "open_dataset_url": "https://huggingface.co/datasets/startup/clinic-qa",
        "registrations": [{"kind": "ai_technical_service", "number": "AI-113-0042"}],
    },
    "productisation": {
        "target_customers": "診所",
        "progress": "原型",
        "product_form": "SaaS",
        "pricing_unit": "每月每診所",
    },
    "other_needs": "",
    "pledge": True,
}


def training(**changes) -> dict:
    data = copy.deepcopy(_COMMON)
    data["bonus"]["open_model_url"] = "https://huggingface.co/startup/clinic-llama"
    data.update(
        {
            "environments": ["A", "B"],
            "container": {
                "model_name": "clinic-llama",
                "version": "1.0",
                "download_link": "https://huggingface.co/startup/clinic-llama",
                "base_model": "meta-llama/Llama-3.1-8B",
            },
            "no_code_models": ["TAIDE"],
            "dataset": {
                "text_tokens": "120,000,000",
                "speech_hours": "35.5",
                "video_hours": "",
                "video_resolution": "",
                "image_count": "2400",
                "image_resolution": "1920x1080",
                "description": "門診問答",
                "open_datasets": "",
            },
        }
    )
    data.update(changes)
    return data


def inference(**changes) -> dict:
    data = copy.deepcopy(_COMMON)
    del data["benefit"]["model_count"]
    data["bonus"]["open_code_url"] = "https://github.com/startup/clinic-bot"
    data.update({"preset_models": ["TAIDE", "Llama"], "application_scenario": "夜間客服"})
    data.update(changes)
    return data
