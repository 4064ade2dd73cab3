"""Banned models: open models from Chinese or Chinese-funded makers (rules of use, item 5).

Two checks, one set of rules:

- :func:`check_application`: the model name, base model and download link that an
  application names (free text and URLs), for the qualification review;
- :func:`scan_models`: a project's storage, folder by folder, from what Hugging Face model
  folders say about themselves: ``config.json`` (``architectures``, ``model_type``,
  ``_name_or_path``, ``auto_map``), ``adapter_config.json`` (``base_model_name_or_path`` of a
  LoRA adapter), the model card's YAML front matter (``base_model``, a string or a list), the
  Hugging Face cache's ``models--org--name`` folders, and the folders' own names.

Every finding carries its evidence: the file, the field, the value and the rule that matched.
A finding is a lead for the operator, not a verdict.

Short names are where false positives come from ("yi" in "yield", "glm" in "glmnet",
"minimax" the search algorithm, "moonshot" the English word). So a rule matches on:

- organisation names on Hugging Face, ModelScope and GitHub (``deepseek-ai``, ``Qwen``,
  ``01-ai``), compared whole;
- architecture class names (``Qwen2ForCausalLM``) by prefix followed by a version or a
  capital letter, and ``model_type`` by its first word without digits;
- model names by patterns bounded on both sides by anything but a letter or digit, written so
  that short names need their version or suffix (``yi-34b``, ``glm-4``, ``minimax-m1``).

``aipower-scan-models PATH`` prints the scan's report as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import yaml
from traitlets import Dict, List
from traitlets.config import SingletonConfigurable

# one rule per family or maker; every list may be empty
DEFAULT_RULES: list[dict] = [
    {
        "name": "deepseek",
        "maker": "DeepSeek (深度求索)",
        "orgs": ["deepseek-ai"],
        "architectures": ["Deepseek"],
        "model_types": ["deepseek"],
        "patterns": [r"deep[-_ ]?seek", r"深度求索"],
    },
    {
        "name": "qwen",
        "maker": "Alibaba Qwen (通義千問)",
        "orgs": ["Qwen", "QwenLM", "alibaba-nlp"],
        "architectures": ["Qwen", "QWen"],
        "model_types": ["qwen"],
        "patterns": [r"qwen\d*(?:\.\d+)?", r"qwq", r"qvq", r"通[義义]千[問问]", r"千[問问]"],
    },
    {
        "name": "baichuan",
        "maker": "Baichuan (百川智能)",
        "orgs": ["baichuan-inc"],
        "architectures": ["Baichuan"],
        "model_types": ["baichuan"],
        "patterns": [r"baichuan\d*", r"百川智能"],
    },
    {
        "name": "glm",
        "maker": "Zhipu AI / THUDM (智譜)",
        "orgs": ["THUDM", "zai-org", "zhipuai", "ZhipuAI"],
        "architectures": ["ChatGLM", "Glm", "GLM"],
        "model_types": ["chatglm", "glm"],
        "patterns": [r"chatglm\d*", r"glm[-_ ]?\d", r"codegeex\d*", r"cogvlm\d*", r"智[譜谱]"],
    },
    {
        "name": "internlm",
        "maker": "Shanghai AI Laboratory InternLM (書生)",
        "orgs": ["internlm", "OpenGVLab"],
        "architectures": ["InternLM", "InternVL"],
        "model_types": ["internlm", "internvl"],
        "patterns": [r"internlm\d*", r"internvl\d*"],
    },
    {
        "name": "yi",
        "maker": "01.AI (零一萬物)",
        "orgs": ["01-ai"],
        "architectures": ["Yi"],
        "model_types": ["yi"],
        "patterns": [r"yi[-_ ](?:\d|lightning|large|vl|coder)", r"零一[萬万]物"],
    },
    {
        "name": "kimi",
        "maker": "Moonshot AI Kimi (月之暗面)",
        "orgs": ["moonshotai", "MoonshotAI"],
        "architectures": ["Kimi"],
        "model_types": ["kimi"],
        "patterns": [r"kimi", r"moonshot[-_ ]?(?:v\d|ai)", r"月之暗面"],
    },
    {
        "name": "minimax",
        "maker": "MiniMax (稀宇科技)",
        "orgs": ["MiniMaxAI", "MiniMax-AI"],
        "architectures": ["MiniMax"],
        "model_types": ["minimax"],
        "patterns": [r"minimax[-_ ]?(?:text|vl|m\d|01|abab)", r"abab\d"],
    },
    {
        "name": "ernie",
        "maker": "Baidu ERNIE (文心)",
        "orgs": ["baidu", "PaddlePaddle"],
        "architectures": ["Ernie"],
        "model_types": ["ernie"],
        "patterns": [r"ernie[-_ ]?(?:\d|bot|speed|lite|tiny|x\d|vil)", r"文心一言"],
    },
    {
        "name": "hunyuan",
        "maker": "Tencent Hunyuan (混元)",
        "orgs": ["tencent"],
        "architectures": ["HunYuan", "Hunyuan"],
        "model_types": ["hunyuan"],
        "patterns": [r"hunyuan"],
    },
    {
        "name": "minicpm",
        "maker": "OpenBMB MiniCPM (面壁智能)",
        "orgs": ["openbmb"],
        "architectures": ["MiniCPM"],
        "model_types": ["minicpm"],
        "patterns": [r"minicpm"],
    },
    {
        "name": "stepfun",
        "maker": "StepFun (階躍星辰)",
        "orgs": ["stepfun-ai"],
        "architectures": ["Step"],
        "model_types": ["step"],
        "patterns": [r"step[-_ ]?(?:\d|audio|video)(?:[-_ ]|$)"],
    },
]


@dataclass(frozen=True)
class Rule:
    name: str
    maker: str = ""
    orgs: tuple[str, ...] = ()
    architectures: tuple[str, ...] = ()
    model_types: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    _org_set: frozenset = field(default=frozenset(), repr=False, compare=False)
    _arch: re.Pattern | None = field(default=None, repr=False, compare=False)
    _names: re.Pattern | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: dict) -> Rule:
        unknown = set(data) - {"name", "maker", "orgs", "architectures", "model_types", "patterns"}
        if unknown or not data.get("name"):
            raise ValueError(f"a rule needs a name and knows no {sorted(unknown)}: {data!r}")
        orgs = tuple(data.get("orgs", ()))
        architectures = tuple(data.get("architectures", ()))
        patterns = tuple(data.get("patterns", ()))
        arch = None
        if architectures:
            # the prefix, then a version (2, V3, 4_5, 1.5) and a capital or the end:
            # Qwen2ForCausalLM, DeepseekV3ForCausalLM, ChatGLMModel; never Yield, Glmnet
            alternatives = "|".join(re.escape(a) for a in architectures)
            arch = re.compile(rf"^(?:{alternatives})(?:[vV]?\d[\d_.]*)?(?:[A-Z_]|$)")
        names = None
        if patterns:
            alternatives = "|".join(f"(?:{p})" for p in patterns)
            names = re.compile(rf"(?<![a-z0-9])(?:{alternatives})(?![a-z])", re.IGNORECASE)
        return cls(
            name=data["name"],
            maker=data.get("maker", ""),
            orgs=orgs,
            architectures=architectures,
            model_types=tuple(t.lower() for t in data.get("model_types", ())),
            patterns=patterns,
            _org_set=frozenset(o.lower() for o in orgs),
            _arch=arch,
            _names=names,
        )

    def org(self, org: str) -> bool:
        return org.lower() in self._org_set

    def architecture(self, name: str) -> bool:
        return self._arch is not None and self._arch.match(name) is not None

    def model_type(self, value: str) -> bool:
        # qwen2_moe -> qwen, deepseek_v3 -> deepseek, glm4 -> glm, internlm2 -> internlm
        first = re.split(r"[_\-]", value.lower(), maxsplit=1)[0].rstrip("0123456789.")
        return first in self.model_types

    def name_match(self, text: str) -> str | None:
        if self._names is None:
            return None
        match = self._names.search(text)
        return match.group(0) if match else None


def load_rules(data: Iterable[dict] | None = None) -> list[Rule]:
    return [Rule.from_dict(d) for d in (DEFAULT_RULES if data is None else data)]


class BannedModels(SingletonConfigurable):
    """The operator's list of banned model families and makers."""

    rules = List(
        Dict(),
        DEFAULT_RULES,
        help="""Banned model families and makers, each a dict: name, maker, orgs (Hugging
        Face / ModelScope / GitHub organisations, compared whole), architectures (class-name
        prefixes in config.json), model_types (config.json model_type without digits), patterns
        (regular expressions for model names, bounded by non-alphanumerics; give short names a
        version or suffix). Default: DeepSeek, Qwen, Baichuan, ChatGLM/GLM, InternLM, Yi
        (01.AI), Kimi (Moonshot), MiniMax, ERNIE, Hunyuan, MiniCPM, StepFun. Example:
        [{"name": "deepseek", "orgs": ["deepseek-ai"], "architectures": ["Deepseek"],
        "model_types": ["deepseek"], "patterns": ["deep[-_ ]?seek"]}]""",
    ).tag(config=True)

    def compiled(self) -> list[Rule]:
        return load_rules(self.rules)


@dataclass(frozen=True)
class Finding:
    rule: str
    maker: str
    field: str  # where: model_name, config.json architectures, README.md base_model, ...
    value: str  # the whole value that was read
    matched: str  # what in it matched: "org deepseek-ai", "architecture Qwen2ForCausalLM", ...
    path: str = ""  # the file (scans), relative to the scanned root

    def as_dict(self) -> dict:
        return asdict(self)


# ---- free text and URLs ----------------------------------------------------------------------

# org/name as in Hugging Face ids and URL paths
_REPO_ID = re.compile(r"(?<![\w.-])([A-Za-z0-9][\w.-]{0,95})/([A-Za-z0-9][\w.-]{0,95})")
_MODEL_HOSTS = {
    "huggingface.co",
    "hf.co",
    "www.huggingface.co",
    "modelscope.cn",
    "www.modelscope.cn",
    "github.com",
    "www.github.com",
    "gitee.com",
}


def _repo_ids(text: str) -> Iterator[tuple[str, str]]:
    """The (org, name) pairs a text names: URLs of model hubs and bare ``org/name`` ids."""
    for token in re.split(r"\s+", text):
        if "://" in token:
            url = urlparse(token.strip("<>()[]\"',"))
            if url.hostname not in _MODEL_HOSTS:
                continue
            parts = [p for p in url.path.split("/") if p]
            if parts[:1] == ["models"]:  # modelscope.cn/models/org/name
                parts = parts[1:]
            if len(parts) >= 2:
                yield parts[0], parts[1]
            elif len(parts) == 1:
                yield parts[0], ""
            continue
        for match in _REPO_ID.finditer(token):
            yield match.group(1), match.group(2)
    # the Hugging Face cache: models--org--name
    for match in re.finditer(r"models--([\w.-]+?)--([\w.-]+)", text):
        yield match.group(1), match.group(2)


def check_text(text: str, field_name: str, rules: list[Rule], path: str = "") -> list[Finding]:
    """Findings in one value: organisations in ids and URLs, then model names."""
    if not text:
        return []
    findings: list[Finding] = []
    seen: set[str] = set()
    ids = list(_repo_ids(text))
    for rule in rules:
        matched = None
        for org, _name in ids:
            if rule.org(org):
                matched = f"org {org}"
                break
        if matched is None:
            hit = rule.name_match(text)
            if hit:
                matched = f"name {hit}"
        if matched and rule.name not in seen:
            seen.add(rule.name)
            findings.append(Finding(rule.name, rule.maker, field_name, text, matched, path))
    return findings


def check_application(
    model_name: str = "",
    base_model: str = "",
    download_link: str = "",
    rules: list[Rule] | None = None,
) -> list[Finding]:
    """What an application's model section names (Attachment 2, environment A: model name,
    base model when distilled or fine-tuned, download link), for the qualification review."""
    rules = load_rules() if rules is None else rules
    findings = []
    for field_name, value in (
        ("model_name", model_name),
        ("base_model", base_model),
        ("download_link", download_link),
    ):
        findings += check_text(value or "", field_name, rules)
    return findings


# ---- model folders -----------------------------------------------------------------------------

MAX_JSON_BYTES = 5 * 1024 * 1024
MAX_CARD_BYTES = 1024 * 1024
_SKIPPED_DIRS = {".git", "__pycache__", ".ipynb_checkpoints", "node_modules"}


def _read_json(path: Path) -> dict:
    if path.stat().st_size > MAX_JSON_BYTES:
        raise ValueError(f"larger than {MAX_JSON_BYTES} bytes")
    data = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def front_matter(text: str) -> dict:
    """The YAML front matter of a model card (between the first two ``---`` lines)."""
    lines = text.lstrip("\ufeff").splitlines()
    if not lines or lines[0].strip() != "---":
        return {}
    for end, line in enumerate(lines[1:], start=1):
        if line.strip() == "---":
            data = yaml.safe_load("\n".join(lines[1:end]))
            return data if isinstance(data, dict) else {}
    return {}


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    if isinstance(value, dict):
        return [v for v in value.values() if isinstance(v, str)]
    return []


def _check_config(data: dict, rel: str, rules: list[Rule]) -> list[Finding]:
    findings = []
    for arch in _strings(data.get("architectures")):
        for rule in rules:
            if rule.architecture(arch):
                findings.append(
                    Finding(
                        rule.name, rule.maker, "architectures", arch, f"architecture {arch}", rel
                    )
                )
    model_type = data.get("model_type")
    if isinstance(model_type, str):
        for rule in rules:
            if rule.model_type(model_type):
                findings.append(
                    Finding(
                        rule.name,
                        rule.maker,
                        "model_type",
                        model_type,
                        f"model_type {model_type}",
                        rel,
                    )
                )
    # custom code: "auto_map": {"AutoModelForCausalLM": "modeling_deepseek.DeepseekV3ForCausalLM"}
    for ref in _strings(data.get("auto_map")):
        cls = ref.rsplit(".", 1)[-1]
        for rule in rules:
            if rule.architecture(cls):
                findings.append(
                    Finding(rule.name, rule.maker, "auto_map", ref, f"architecture {cls}", rel)
                )
    for key in ("_name_or_path", "base_model_name_or_path"):
        for value in _strings(data.get(key)):
            findings += check_text(value, key, rules, rel)
    return findings


def _model_folders(root: Path) -> Iterator[Path]:
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS)
        if {"config.json", "adapter_config.json", "README.md"} & set(files):
            yield Path(folder)


def scan_models(root: str | os.PathLike, rules: list[Rule] | None = None) -> dict:
    """Scan every model folder under ``root``; a report with the findings and their evidence.

    A model folder is one with a ``config.json``, an ``adapter_config.json`` or a model card
    (``README.md``). Its own path (relative to ``root``) is checked as a name too.
    """
    rules = load_rules() if rules is None else rules
    root = Path(root)
    findings: list[Finding] = []
    errors: list[dict] = []
    folders: list[str] = []
    flagged: list[str] = []
    for folder in _model_folders(root):
        rel_folder = folder.relative_to(root).as_posix()
        here: list[Finding] = []
        for name in ("config.json", "adapter_config.json"):
            path = folder / name
            rel = _rel(rel_folder, name)
            if not path.is_file():
                continue
            try:
                here += _check_config(_read_json(path), rel, rules)
            except (OSError, ValueError) as e:
                errors.append({"path": rel, "error": str(e)})
        card = folder / "README.md"
        if card.is_file():
            rel = _rel(rel_folder, "README.md")
            try:
                if card.stat().st_size > MAX_CARD_BYTES:
                    raise ValueError(f"larger than {MAX_CARD_BYTES} bytes")
                meta = front_matter(card.read_text(encoding="utf-8", errors="replace"))
            except (OSError, ValueError, yaml.YAMLError) as e:
                errors.append({"path": rel, "error": str(e)})
                meta = {}
            for value in _strings(meta.get("base_model")):
                here += check_text(value, "base_model", rules, rel)
        if rel_folder != ".":
            here += check_text(rel_folder, "folder name", rules, rel_folder)
        folders.append(rel_folder)
        if here:
            flagged.append(rel_folder)
        findings += here
    return {
        "root": str(root),
        "model_folders": folders,
        "flagged_folders": flagged,
        "rules_matched": sorted({f.rule for f in findings}),
        "findings": [f.as_dict() for f in findings],
        "errors": errors,
        "clean": not findings,
    }


def _rel(folder: str, name: str) -> str:
    return name if folder == "." else f"{folder}/{name}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="aipower-scan-models",
        description="Scan model folders for banned model families and makers; prints a JSON "
        "report. Exit status: 0 clean, 1 findings, 2 error.",
    )
    parser.add_argument("path", help="a project's storage, or any folder of models")
    given = parser.add_mutually_exclusive_group()
    given.add_argument(
        "--rules", help="a JSON file with the list of rules (default: the built-in list)"
    )
    given.add_argument(
        "--rules-json",
        help="""the list of rules itself, e.g. '[{"name": "deepseek", "orgs": ["deepseek-ai"]}]'
        (how the quota service gives a scan pod the operator's rules)""",
    )
    args = parser.parse_args(argv)
    if not Path(args.path).is_dir():
        print(json.dumps({"error": f"not a folder: {args.path}"}), file=sys.stderr)
        return 2
    try:
        text = Path(args.rules).read_text() if args.rules else args.rules_json
        rules = load_rules(json.loads(text) if text else None)
    except (OSError, ValueError, re.error) as e:
        print(json.dumps({"error": f"rules: {e}"}), file=sys.stderr)
        return 2
    report = scan_models(args.path, rules)
    print(json.dumps(report, ensure_ascii=False, indent=2))
    return 0 if report["clean"] else 1


if __name__ == "__main__":
    sys.exit(main())
