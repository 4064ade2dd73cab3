"""The applicant's form: which fields each category shows, in which parts and sections, and
how a posted form becomes the application's documents and back.

One table (:data:`PARTS`) drives both the page and the parsing, so a field shown is a field
read. A field's ``path`` is the dotted path that validation.py reports errors for and that a
supplement request lists (``company.lead.email``, ``proposal.dataset.image_count``); the
input's ``name`` is the path too. Values are kept as typed (strings; ticked boxes ``True``),
exactly what ``applications.save_draft`` stores and ``validation`` checks.

Supporting files (the field-partner MOU, product material) are kept in a ``FileStore``; their
record ``{key, name, size, sha256, type}`` stands in the proposal at ``proposal.bonus.mou_file``
and ``proposal.bonus.product_material_file``.
"""

from __future__ import annotations

import copy
import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from . import closing, validation

BOTH = ("training", "inference")


def _(message: str) -> str:
    """Marks an English message id for the catalogue; the page translates it where shown."""
    return message


@dataclass(frozen=True)
class Field:
    path: str
    label: str
    kind: str = "text"  # text, textarea, checkbox, choices, lines, registrations, file
    hint: str = ""
    choices: tuple[tuple[str, str], ...] = ()  # (value, label)
    inputmode: str = ""
    autocomplete: str = ""
    categories: tuple[str, ...] = BOTH

    @property
    def id(self) -> str:
        """The input's id (the first box's, for a group): the path with hyphens."""
        return "f-" + self.path.replace(".", "-")


@dataclass(frozen=True)
class Section:
    id: str
    title: str
    fields: tuple[Field, ...]
    path: str = ""  # the part of the documents it stands for, where messages name it whole

    def fields_for(self, category: str) -> list[Field]:
        return [f for f in self.fields if category in f.categories]


@dataclass(frozen=True)
class Part:
    id: str
    title: str
    sections: tuple[Section, ...]
    categories: tuple[str, ...] = BOTH


def _person(role: str, phones: tuple[Field, ...]) -> tuple[Field, ...]:
    return (
        Field(f"company.{role}.name", _("Name"), autocomplete="name"),
        Field(f"company.{role}.title", _("Job title"), autocomplete="organization-title"),
        *phones,
        Field(
            f"company.{role}.email",
            _("E-mail"),
            hint=_("e.g. lin@startup.example.tw"),
            inputmode="email",
            autocomplete="email",
        ),
    )


def _url(path: str, label: str, hint: str, **kw) -> Field:
    return Field(path, label, hint=hint, inputmode="url", **kw)


COUNT_HINT = _("a whole number, e.g. 120,000,000")
HOURS_HINT = _("hours, up to 3 decimals, e.g. 35.5")
RESOLUTION_HINT = _("WIDTHxHEIGHT, e.g. 1920x1080")
LINES_HINT = _("one per line, e.g. TAIDE")
REPOSITORY_HINT = _("a Hugging Face or GitHub repository, e.g. https://huggingface.co/org/name")
LINK_HINT = _("a link starting with https://")

COMPANY = Section(
    "company",
    _("Company data"),
    (
        Field("company.name", _("Company name"), autocomplete="organization"),
        Field(
            "company.business_number",
            _("Unified business number"),
            hint=_("8 digits, e.g. 22099131"),
            inputmode="numeric",
        ),
        Field(
            "company.industry_codes",
            _("Industry codes (tick every one that applies)"),
            kind="choices",
            choices=(
                ("J582", _("J582 Software publishing")),
                ("J62", _("J62 Computer programming, consultancy and related services")),
                ("J63", _("J63 Information services")),
                ("K6699", _("K6699 Third-party payment services")),
            ),
        ),
        Field("company.founding_date", _("Founding date"), hint=_("YYYY-MM-DD, e.g. 2019-05-01")),
        Field(
            "company.paid_in_capital",
            _("Paid-in capital (NT$)"),
            hint=_("a whole number, e.g. 5,000,000"),
            inputmode="numeric",
        ),
        Field("company.representative", _("Representative")),
        Field(
            "company.employees", _("Number of employees"), hint=_("e.g. 12"), inputmode="numeric"
        ),
        Field("company.address", _("Address"), autocomplete="street-address"),
    ),
)
LANDLINE_HINT = _("with the area code, e.g. 02-2345-6789#123")
LEAD = Section(
    "lead",
    _("Project lead"),
    _person(
        "lead",
        (
            Field(
                "company.lead.phone",
                _("Phone"),
                hint=_("a landline with the area code or a mobile, e.g. 02-2345-6789#123"),
                inputmode="tel",
                autocomplete="tel",
            ),
        ),
    ),
    path="company.lead",
)
CONTACT = Section(
    "contact",
    _("Contact person"),
    _person(
        "contact",
        (
            Field(
                "company.contact.office_phone",
                _("Office phone"),
                hint=LANDLINE_HINT,
                inputmode="tel",
                autocomplete="tel",
            ),
            Field(
                "company.contact.mobile",
                _("Mobile phone"),
                hint=_("e.g. 0912-345-678"),
                inputmode="tel",
                autocomplete="tel",
            ),
        ),
    ),
    path="company.contact",
)
PROFILE = Section(
    "profile",
    _("Company profile"),
    (
        Field("company.profile.business_items", _("Business items"), kind="textarea"),
        Field("company.profile.main_products", _("Main products or services"), kind="textarea"),
        Field("company.profile.sales_regions", _("Main sales regions"), kind="textarea"),
    ),
    path="company.profile",
)
CONSENT = Section(
    "consent",
    _("Personal-data consent"),
    (
        Field(
            "consent.personal_data",
            _(
                "I have read the notice on the collection of personal data and consent to the "
                "collection, processing and use of my personal data (name, phone, e-mail, "
                "job title) for this platform."
            ),
            kind="checkbox",
        ),
    ),
    path="consent",
)
DECLARATIONS = Section(
    "declarations",
    _("Declarations"),
    tuple(
        Field(f"declarations.{name}", label, kind="checkbox")
        for name, label in (
            (
                "registered_in_taiwan",
                _(
                    "The company is registered in Taiwan as a sole proprietorship, partnership, "
                    "limited partnership or company."
                ),
            ),
            (
                "not_branch_office",
                _("The company is not a branch office of a Taiwanese or a foreign company."),
            ),
            ("not_china_invested", _("The company is not China-invested.")),
            (
                "no_major_breach",
                _("No major breach of a government project in the last 3 years."),
            ),
            (
                "no_serious_violation",
                _(
                    "No serious violation of environmental, labour, food-safety or "
                    "disability-rights law in the last 3 years."
                ),
            ),
            ("truthful", _("Everything filled in here is true.")),
        )
    ),
    path="declarations",
)
PROPOSAL = Section(
    "proposal",
    _("The proposal"),
    (
        Field("proposal.title", _("Project title")),
        Field(
            "proposal.domains",
            _("Domains (tick every one that applies)"),
            kind="choices",
            choices=(
                ("healthcare", _("Healthcare")),
                ("disaster_prevention", _("Disaster prevention")),
                ("manufacturing", _("Manufacturing")),
                ("retail", _("Retail")),
                ("finance", _("Finance")),
                ("public_welfare", _("Public welfare")),
                ("transport", _("Transport")),
                ("education", _("Education")),
                ("other", _("Other")),
            ),
        ),
        Field("proposal.domain_other", _("Other domain"), hint=_("when you ticked Other")),
        Field(
            "proposal.preset_models",
            _("Preset models wanted"),
            kind="lines",
            hint=LINES_HINT,
            categories=("inference",),
        ),
        Field(
            "proposal.importance",
            _("Importance: the problem to solve and why this model"),
            kind="textarea",
        ),
        Field("proposal.industry_application", _("Industry application"), kind="textarea"),
        Field(
            "proposal.application_scenario",
            _("Application scenario"),
            kind="textarea",
            categories=("inference",),
        ),
    ),
)
RESOURCES = Section(
    "resources",
    _("Models and resources"),
    (
        Field(
            "proposal.environments",
            _("Environments (tick every one you need)"),
            kind="choices",
            choices=(
                ("A", _("A: container environment (upload your own model and tools, then train)")),
                ("B", _("B: No-Code training (choose preset models, upload data, train)")),
                ("C", _("C: model validation (call preset models through an API)")),
            ),
        ),
        Field("proposal.container.model_name", _("Model name (environment A)")),
        Field("proposal.container.version", _("Model version (environment A)")),
        _url("proposal.container.download_link", _("Download link (environment A)"), LINK_HINT),
        Field(
            "proposal.container.base_model",
            _(
                "Base model, when the model was distilled or fine-tuned from another (environment A)"
            ),
        ),
        Field(
            "proposal.no_code_models",
            _("Preset models for No-Code training (environment B)"),
            kind="lines",
            hint=LINES_HINT,
        ),
        Field(
            "proposal.validation_models",
            _("Preset models to validate (environment C)"),
            kind="lines",
            hint=LINES_HINT,
        ),
    ),
)
DATASET = Section(
    "dataset",
    _("Training dataset (give at least one figure)"),
    (
        Field(
            "proposal.dataset.text_tokens", _("Text (tokens)"), hint=COUNT_HINT, inputmode="numeric"
        ),
        Field(
            "proposal.dataset.speech_hours",
            _("Speech (hours)"),
            hint=HOURS_HINT,
            inputmode="decimal",
        ),
        Field(
            "proposal.dataset.video_hours", _("Video (hours)"), hint=HOURS_HINT, inputmode="decimal"
        ),
        Field(
            "proposal.dataset.video_resolution", _("Average video resolution"), hint=RESOLUTION_HINT
        ),
        Field(
            "proposal.dataset.image_count",
            _("Images (count)"),
            hint=COUNT_HINT,
            inputmode="numeric",
        ),
        Field(
            "proposal.dataset.image_resolution", _("Average image resolution"), hint=RESOLUTION_HINT
        ),
        Field("proposal.dataset.description", _("What the data contains"), kind="textarea"),
        Field(
            "proposal.dataset.open_datasets",
            _("Open data sets chosen (optional)"),
            kind="textarea",
        ),
    ),
    path="proposal.dataset",
)
BENEFIT = Section(
    "benefit",
    _("Expected benefit"),
    (
        Field(
            "proposal.benefit.model_count",
            _("Number of models"),
            inputmode="numeric",
            categories=("training",),
        ),
        Field(
            "proposal.benefit.application_count", _("Number of applications"), inputmode="numeric"
        ),
        Field(
            "proposal.benefit.report_agreement",
            _(
                "The company will deliver a final report, slides and a demo video within 30 "
                "calendar days after the window ends."
            ),
            kind="checkbox",
        ),
        Field(
            "proposal.benefit.demo_meeting",
            _("The company will attend the operator's product demo meeting."),
            kind="checkbox",
        ),
    ),
    path="proposal.benefit",
)
MOU_FILE = "proposal.bonus.mou_file"
PRODUCT_MATERIAL_FILE = "proposal.bonus.product_material_file"
BONUS = Section(
    "bonus",
    _("Bonus items (optional)"),
    (
        _url("proposal.bonus.mou_link", _("Field-partner MOU (link)"), LINK_HINT),
        Field(MOU_FILE, _("Field-partner MOU (file)"), kind="file"),
        _url(
            "proposal.bonus.product_material_link",
            _("Existing product material (link)"),
            LINK_HINT,
        ),
        Field(
            PRODUCT_MATERIAL_FILE,
            _("Existing product material (file)"),
            kind="file",
        ),
        _url("proposal.bonus.open_dataset_url", _("Open data set"), REPOSITORY_HINT),
        _url(
            "proposal.bonus.open_model_url",
            _("Open model"),
            REPOSITORY_HINT,
            categories=("training",),
        ),
        _url(
            "proposal.bonus.open_code_url",
            _("Open code"),
            REPOSITORY_HINT,
            categories=("inference",),
        ),
        Field(
            "proposal.bonus.registrations",
            _("Capability registrations"),
            kind="registrations",
            choices=(
                ("aml_payment", _("Anti-money-laundering registration of a payment service")),
                ("e_signature", _("Electronic-signature solution service")),
                ("data_economy", _("Data economy service")),
                ("ai_technical_service", _("AI technical service")),
                ("information_service", _("Information service")),
                ("information_security", _("Information security service")),
            ),
        ),
    ),
    path="proposal.bonus",
)
PRODUCTISATION = Section(
    "productisation",
    _("Productisation plan"),
    (
        Field("proposal.productisation.target_customers", _("Target customers"), kind="textarea"),
        Field("proposal.productisation.progress", _("Progress"), kind="textarea"),
        Field("proposal.productisation.product_form", _("Product form"), kind="textarea"),
        Field(
            "proposal.productisation.pricing_unit",
            _("Pricing unit"),
            hint=_("e.g. per clinic per month"),
        ),
    ),
    path="proposal.productisation",
)
CLOSING_SECTION = Section(
    "pledge",
    _("Other needs and pledge"),
    (
        Field("proposal.other_needs", _("Other needs (optional)"), kind="textarea"),
        Field(
            "proposal.pledge",
            _(
                "The company guarantees that everything attached is correct and infringes no "
                "one's intellectual property, has read the platform's user declarations and "
                "will follow every rule."
            ),
            kind="checkbox",
        ),
    ),
)

PARTS = (
    Part("attachment-1", _("Attachment 1: company data"), (COMPANY, LEAD, CONTACT, PROFILE)),
    Part("consent-declarations", _("Consent and declarations"), (CONSENT, DECLARATIONS)),
    Part(
        "attachment-2",
        _("Attachment 2: training proposal"),
        (PROPOSAL, RESOURCES, DATASET, BENEFIT, BONUS, PRODUCTISATION, CLOSING_SECTION),
        categories=("training",),
    ),
    Part(
        "attachment-3",
        _("Attachment 3: inference proposal"),
        (PROPOSAL, BENEFIT, BONUS, PRODUCTISATION, CLOSING_SECTION),
        categories=("inference",),
    ),
)
FILE_PARTS = {"mou": MOU_FILE, "product-material": PRODUCT_MATERIAL_FILE}  # URL part → path

STATUS_LABELS = {
    "draft": _("Draft"),
    "submitted": _("Submitted"),
    "qualification": _("Qualification review"),
    "supplement_requested": _("Supplement requested"),
    "resubmitted": _("Resubmitted"),
    "professional_review": _("Professional review"),
    "selected": _("Selected"),
    "awarded": _("Awarded"),
    "rejected": _("Not approved"),
    "withdrawn": _("Withdrawn"),
}
CATEGORY_LABELS = {"training": _("Training"), "inference": _("Inference")}
ROLE_LABELS = {"lead": _("Project lead"), "contact": _("Contact person"), "trainee": _("Trainee")}


def parts_for(category: str) -> list[Part]:
    return [p for p in PARTS if category in p.categories]


def fields_for(category: str) -> list[Field]:
    return [
        field
        for part in parts_for(category)
        for section in part.sections
        for field in section.fields_for(category)
    ]


# ---- values -------------------------------------------------------------------------------


def value_at(docs: dict, path: str):
    """The stored value at a dotted path of the documents, or None."""
    value = docs
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def put(docs: dict, path: str, value) -> None:
    """Set a dotted path, making the dictionaries on the way (replacing what is not one)."""
    *parents, last = path.split(".")
    for part in parents:
        child = docs.get(part)
        if not isinstance(child, dict):
            child = docs[part] = {}
        docs = child
    docs[last] = value


class Form:
    """What the form shows for one field, from the documents: text, ticked, chosen, rows."""

    def __init__(self, docs: dict):
        self.docs = docs

    def text(self, field: Field) -> str:
        value = value_at(self.docs, field.path)
        if field.kind == "lines" and isinstance(value, list):
            return "\n".join(str(v) for v in value)
        return "" if value is None or isinstance(value, bool | dict | list) else str(value)

    def ticked(self, field: Field) -> bool:
        return validation.ticked(value_at(self.docs, field.path))

    def chosen(self, field: Field) -> list[str]:
        value = value_at(self.docs, field.path)
        return [str(v) for v in value] if isinstance(value, list) else []

    def rows(self, field: Field) -> list[dict]:
        """The registrations, then blank rows up to one for each kind."""
        value = value_at(self.docs, field.path)
        rows = [r if isinstance(r, dict) else {} for r in value] if isinstance(value, list) else []
        return rows + [{}] * max(len(field.choices) - len(rows), 1)

    def file(self, field: Field) -> dict | None:
        return file_at(self.docs, field.path)


def file_at(docs: dict, path: str) -> dict | None:
    """The record of the supporting file at ``path``, or None when none was uploaded."""
    value = value_at(docs, path)
    return value if isinstance(value, dict) and value.get("key") else None


# ---- reading a posted form ---------------------------------------------------------------


def read_value(field: Field, one: Callable[[str], str | None], many: Callable[[str], list[str]]):
    """The value a posted form gives ``field`` (None for files, which come separately).
    ``one(name)`` is the argument or None when absent, ``many(name)`` every value of it."""
    name = field.path
    if field.kind == "checkbox":
        return one(name) is not None
    if field.kind == "choices":
        return many(name)
    if field.kind == "lines":
        return [line.strip() for line in (one(name) or "").splitlines() if line.strip()]
    if field.kind == "registrations":
        rows, index = [], 0
        while one(f"{name}.{index}.kind") is not None or one(f"{name}.{index}.number") is not None:
            kind, number = one(f"{name}.{index}.kind") or "", one(f"{name}.{index}.number") or ""
            if kind or number:
                rows.append({"kind": kind, "number": number})
            index += 1
        return rows
    return one(name) or ""


def documents_from_form(
    category: str,
    stored: dict,
    one: Callable[[str], str | None],
    many: Callable[[str], list[str]],
    *,
    editable: Callable[[str], bool] = lambda path: True,
) -> tuple[dict, dict[str, object]]:
    """The documents after the post, and the changes by path: every editable field of the
    category takes its posted value; everything else (other fields, files) stays as stored."""
    docs = copy.deepcopy(stored)
    changes = {}
    for field in fields_for(category):
        if field.kind == "file" or not editable(field.path):
            continue
        changes[field.path] = read_value(field, one, many)
        put(docs, field.path, changes[field.path])
    return docs, changes


# ---- supporting files ----------------------------------------------------------------------


def file_record(application_id: int, upload: closing.Upload) -> tuple[dict, bytes]:
    """The record kept in the proposal for an accepted upload, and the bytes to store."""
    name = closing.safe_filename(upload.filename)
    key = f"applications/{application_id}/{uuid.uuid4().hex}/{name}"
    return (
        {
            "key": key,
            "name": upload.filename,
            "size": len(upload.body),
            "sha256": hashlib.sha256(upload.body).hexdigest(),
            "type": closing.content_type(key),
        },
        upload.body,
    )


@dataclass(frozen=True)
class Place:
    """Where a message about a path is shown: the id it links to, under which section and
    field labels (message ids; empty when there is none)."""

    anchor: str
    section: str = ""
    label: str = ""


def locate(path: str, category: str) -> Place:
    """The field's place, the place of the field that holds it (a registration's
    ``proposal.bonus.registrations.0.kind`` is its row's box), or of the section it names
    whole (``proposal.dataset``); else the form's top."""
    for part in parts_for(category):
        for section in part.sections:
            fields = section.fields_for(category)
            if section.path and path == section.path:
                return Place(fields[0].id, section.title)
            for field in fields:
                if path == field.path and field.kind == "choices":  # the group's first box
                    return Place(f"{field.id}-{field.choices[0][0]}", section.title, field.label)
                if path == field.path:
                    return Place(field.id, section.title, field.label)
                if path.startswith(field.path + "."):
                    anchor = field.id + path[len(field.path) :].replace(".", "-")
                    return Place(anchor, section.title, field.label)
    for part in parts_for(category):  # a whole document: company, proposal
        fields = [f for section in part.sections for f in section.fields_for(category)]
        if all(f.path.startswith(path + ".") for f in fields):
            return Place(fields[0].id, part.title)
    return Place("application-form")
