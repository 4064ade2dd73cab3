"""Banned models: applications' free text and URLs, and scans of sample model folders."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from quota_service.banned_models import (
    DEFAULT_RULES,
    BannedModels,
    check_application,
    check_text,
    front_matter,
    load_rules,
    main,
    scan_models,
)

MODELS = Path(__file__).parent / "data" / "models"
RULES = load_rules()


def rules_of(findings) -> set[str]:
    return {f.rule for f in findings}


# ---- applications ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_name", "base_model", "link", "rule"),
    [
        ("DeepSeek-R1-Distill-Llama-8B", "", "", "deepseek"),
        ("客服模型", "deepseek-ai/DeepSeek-R1", "", "deepseek"),
        ("客服模型", "", "https://huggingface.co/deepseek-ai/DeepSeek-V3", "deepseek"),
        ("Qwen2.5-7B-Instruct", "", "", "qwen"),
        ("", "", "https://modelscope.cn/models/qwen/QwQ-32B", "qwen"),
        ("", "", "https://github.com/QwenLM/Qwen3", "qwen"),
        ("以通義千問微調的模型", "", "", "qwen"),
        ("Baichuan2-13B-Chat", "", "", "baichuan"),
        ("", "THUDM/chatglm3-6b", "", "glm"),
        ("GLM-4-9B-Chat", "", "", "glm"),
        ("internlm2_5-7b-chat", "", "", "internlm"),
        ("Yi-1.5-34B-Chat", "", "", "yi"),
        ("", "01-ai/Yi-34B", "", "yi"),
        ("Kimi-K2-Instruct", "", "", "kimi"),
        ("", "", "https://hf.co/moonshotai/Kimi-VL-A3B-Instruct", "kimi"),
        ("MiniMax-M1-80k", "", "", "minimax"),
        ("ERNIE-4.5-21B-A3B", "", "", "ernie"),
        ("", "baidu/ERNIE-4.5-0.3B-PT", "", "ernie"),
        ("", "tencent/Hunyuan-7B-Instruct", "", "hunyuan"),
        ("MiniCPM-V-2_6", "", "", "minicpm"),
    ],
)
def test_an_application_naming_a_banned_model_is_flagged_with_evidence(
    model_name, base_model, link, rule
):
    findings = check_application(model_name, base_model, link)
    assert rule in rules_of(findings), findings
    finding = next(f for f in findings if f.rule == rule)
    value = {"model_name": model_name, "base_model": base_model, "download_link": link}
    assert finding.value == value[finding.field] and finding.matched
    assert finding.maker


@pytest.mark.parametrize(
    ("model_name", "base_model", "link"),
    [
        ("Llama-3.1-TAIDE-LX-8B-Chat", "meta-llama/Llama-3.1-8B", ""),
        ("gemma-2-9b-it", "google/gemma-2-9b", "https://huggingface.co/google/gemma-2-9b"),
        ("gpt-oss-20b", "openai/gpt-oss-20b", ""),
        ("FoxBrain", "", ""),
        ("yield-model", "", ""),  # "yi" inside a word
        ("crop-yield-forecaster-v2", "", ""),
        ("glmnet lasso baseline", "", ""),  # "glm" inside a word
        ("GLMM mixed model", "", ""),
        ("minimax search baseline", "", ""),  # the algorithm, not the maker
        ("a moonshot project", "", ""),  # the English word
        ("Ernie's classifier", "", ""),  # a person's name, not Baidu's model
        ("step-by-step tuned whisper", "", ""),
        ("", "", "https://example.com/models/yield-glmnet.tar.gz"),
        ("", "", "https://huggingface.co/datasets/taide/TAIDE-ZH"),
    ],
)
def test_clean_and_tricky_names_are_not_flagged(model_name, base_model, link):
    assert check_application(model_name, base_model, link) == []


def test_each_field_is_reported_once_per_rule():
    findings = check_application(
        "DeepSeek-R1", "deepseek-ai/DeepSeek-R1", "https://huggingface.co/deepseek-ai/DeepSeek-R1"
    )
    assert [(f.field, f.rule) for f in findings] == [
        ("model_name", "deepseek"),
        ("base_model", "deepseek"),
        ("download_link", "deepseek"),
    ]
    assert findings[1].matched == "org deepseek-ai"


def test_a_mirror_is_flagged_by_the_models_name_not_by_an_org():
    # only model hubs' URLs name organisations; elsewhere the name itself still counts
    findings = check_application(download_link="https://mirror.example.com/deepseek-ai/r1.tar")
    assert [f.matched for f in findings] == ["name deepseek"]


def test_the_hugging_face_cache_layout_names_the_org():
    findings = check_text("hub/models--Qwen--Qwen2-7B/snapshots/abc", "path", RULES)
    assert [f.matched for f in findings] == ["org Qwen"]


def test_the_rules_are_a_setting():
    mine = BannedModels(rules=[{"name": "llama", "orgs": ["meta-llama"], "patterns": ["llama"]}])
    findings = check_application("", "meta-llama/Llama-3.1-8B", "", rules=mine.compiled())
    assert rules_of(findings) == {"llama"}
    names = {r["name"] for r in BannedModels().rules}
    assert {"deepseek", "qwen", "baichuan", "glm", "internlm", "yi", "kimi", "minimax"} <= names
    assert "ernie" in names and BannedModels().rules == DEFAULT_RULES
    with pytest.raises(ValueError, match="knows no"):
        load_rules([{"name": "x", "org": ["typo"]}])


# ---- architectures --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("architecture", "rule"),
    [
        ("Qwen2ForCausalLM", "qwen"),
        ("Qwen3MoeForCausalLM", "qwen"),
        ("QWenLMHeadModel", "qwen"),
        ("DeepseekV3ForCausalLM", "deepseek"),
        ("DeepseekV2ForCausalLM", "deepseek"),
        ("ChatGLMModel", "glm"),
        ("Glm4ForCausalLM", "glm"),
        ("InternLM2ForCausalLM", "internlm"),
        ("BaichuanForCausalLM", "baichuan"),
        ("MiniMaxM1ForCausalLM", "minimax"),
        ("Ernie4_5_MoeForCausalLM", "ernie"),
        ("KimiVLForConditionalGeneration", "kimi"),
        ("YiForCausalLM", "yi"),
    ],
)
def test_banned_architectures(architecture, rule):
    assert [r.name for r in RULES if r.architecture(architecture)] == [rule]


@pytest.mark.parametrize(
    "architecture",
    ["LlamaForCausalLM", "Gemma2ForCausalLM", "MistralForCausalLM", "GptOssForCausalLM",
     "YieldForecaster", "GlmnetRegressor", "WhisperForConditionalGeneration", "StepwiseModel"],
)  # fmt: skip
def test_clean_architectures(architecture):
    assert [r.name for r in RULES if r.architecture(architecture)] == []


# ---- model folders ----------------------------------------------------------------------------


def test_scan_of_the_sample_folders():
    report = scan_models(MODELS)
    assert report["flagged_folders"] == [
        "deepseek-v3",
        "llama-3.1-8b-finetune",
        "lora-adapter",
        "qwen2-7b",
    ]
    assert set(report["model_folders"]) == {
        "deepseek-v3", "experiments/glmnet-baseline", "gemma-2-9b", "llama-3.1-8b",
        "llama-3.1-8b-finetune", "lora-adapter", "qwen2-7b", "yield-model",
    }  # fmt: skip
    assert report["errors"] == [] and report["clean"] is False
    evidence = {(f["path"], f["field"], f["value"], f["rule"]) for f in report["findings"]}
    # Qwen2: the architecture, the model type and where it came from
    assert ("qwen2-7b/config.json", "architectures", "Qwen2ForCausalLM", "qwen") in evidence
    assert ("qwen2-7b/config.json", "_name_or_path", "Qwen/Qwen2-7B", "qwen") in evidence
    assert ("qwen2-7b/config.json", "model_type", "qwen2", "qwen") in evidence
    # DeepSeek-V3
    assert (
        "deepseek-v3/config.json",
        "architectures",
        "DeepseekV3ForCausalLM",
        "deepseek",
    ) in evidence
    # a Llama fine-tune of a DeepSeek distill: only its model card says so
    llama_ft = [f for f in report["findings"] if f["path"].startswith("llama-3.1-8b-finetune")]
    assert [(f["path"], f["field"], f["value"], f["matched"]) for f in llama_ft] == [
        (
            "llama-3.1-8b-finetune/README.md",
            "base_model",
            "deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
            "org deepseek-ai",
        )
    ]
    # a LoRA adapter on Qwen2.5
    assert ("lora-adapter/adapter_config.json", "base_model_name_or_path", "Qwen/Qwen2.5-7B-Instruct", "qwen") in evidence  # fmt: skip
    # clean Llama and Gemma, and the tricky names, are not flagged
    flagged_paths = {f["path"] for f in report["findings"]}
    for clean in ("llama-3.1-8b/", "gemma-2-9b/", "yield-model/", "experiments/glmnet-baseline/"):
        assert not any(p.startswith(clean) or p + "/" == clean for p in flagged_paths), clean


def test_a_clean_folder_alone_is_clean():
    report = scan_models(MODELS / "gemma-2-9b")
    assert report == {
        "root": str(MODELS / "gemma-2-9b"),
        "model_folders": ["."],
        "flagged_folders": [],
        "rules_matched": [],
        "findings": [],
        "errors": [],
        "clean": True,
    }


def test_base_model_as_a_list_and_broken_files(tmp_path):
    card = tmp_path / "merge"
    card.mkdir()
    (card / "README.md").write_text(
        "---\nbase_model:\n  - meta-llama/Llama-3.1-8B\n  - Qwen/Qwen2.5-7B\nbase_model_relation: merge\n---\n# merge\n"
    )
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    (broken / "README.md").write_text("---\nbase_model: [unclosed\n---\n")
    report = scan_models(tmp_path)
    assert [(f["path"], f["value"]) for f in report["findings"]] == [
        ("merge/README.md", "Qwen/Qwen2.5-7B")
    ]
    assert sorted(e["path"] for e in report["errors"]) == ["broken/README.md", "broken/config.json"]


def test_front_matter_only_between_the_first_two_rulers():
    assert front_matter("---\nbase_model: x/y\n---\nbody\n---\n") == {"base_model": "x/y"}
    assert front_matter("# no front matter\nbase_model: deepseek-ai/x\n") == {}
    assert front_matter("---\n- a list\n---\n") == {}


def test_symbolic_links_are_not_followed(tmp_path):
    (tmp_path / "store").mkdir()
    shutil.copytree(MODELS / "qwen2-7b", tmp_path / "elsewhere")
    (tmp_path / "store" / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert scan_models(tmp_path / "store")["findings"] == []


def test_the_command_prints_a_json_report(capsys):
    assert main([str(MODELS)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["flagged_folders"][0] == "deepseek-v3"
    assert main([str(MODELS / "llama-3.1-8b")]) == 0
    assert json.loads(capsys.readouterr().out)["clean"] is True
    assert main([str(MODELS / "nowhere")]) == 2


def test_the_command_takes_a_rules_file(tmp_path, capsys):
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps([{"name": "gemma", "architectures": ["Gemma"]}]))
    assert main([str(MODELS), "--rules", str(rules)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["rules_matched"] == ["gemma"]
    assert set(report["flagged_folders"]) == {"gemma-2-9b", "experiments/glmnet-baseline"}


def test_the_installed_script():
    script = Path(sys.executable).with_name("aipower-scan-models")
    if not script.exists():
        pytest.skip("the package is not installed with its scripts in this environment")
    done = subprocess.run([str(script), str(MODELS / "qwen2-7b")], capture_output=True, text=True)
    assert done.returncode == 1 and json.loads(done.stdout)["rules_matched"] == ["qwen"]
