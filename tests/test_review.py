"""Professional review: assignment, conflicts of interest, weighted arithmetic against worked
examples, aggregation and ranking, the inference pass mark and the training meeting."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from quota_service import applications as apps
from quota_service import review
from quota_service.models import ApplicationStatus
from tests import application_samples as sample
from tests.application_flow import NOW, account, make_round, people, qualified

S = ApplicationStatus
TRAINING_SCORES = {
    "importance": 80,
    "industry_application": 70,
    "dataset": 60,
    "model_resources": 90,
    "benefit": 75,
    "productisation": 85,
}
INFERENCE_SCORES = {
    "importance": 81,
    "industry_application": 77,
    "application_scenario": 68,
    "benefit": 90,
    "productisation": 55,
}


def test_weights_are_the_guidelines():
    assert list(review.WEIGHTS["training"].values()) == [30, 15, 10, 20, 15, 10]
    assert list(review.WEIGHTS["inference"].values()) == [25, 25, 20, 20, 10]
    assert all(sum(w.values()) == 100 for w in review.WEIGHTS.values())


def test_weighted_totals_worked_examples():
    # training: 30×80 + 15×70 + 10×60 + 20×90 + 15×75 + 10×85 = 7825 → 78.25
    assert review.weighted_total("training", TRAINING_SCORES) == Decimal("78.25")
    # three bonus items of 2 points: 84.25
    assert review.weighted_total(
        "training", TRAINING_SCORES, bonus_count=3, bonus_per_item=Decimal(2)
    ) == Decimal("84.25")
    # inference: 25×81 + 25×77 + 20×68 + 20×90 + 10×55 = 7660 → 76.60
    assert review.weighted_total("inference", INFERENCE_SCORES) == Decimal("76.60")
    assert review.weighted_total("inference", dict.fromkeys(INFERENCE_SCORES, 100)) == 100
    assert review.weighted_total("inference", dict.fromkeys(INFERENCE_SCORES, 0)) == 0
    # 1.5 points a bonus item
    assert review.weighted_total(
        "inference", INFERENCE_SCORES, bonus_count=1, bonus_per_item=Decimal("1.5")
    ) == Decimal("78.10")


@pytest.mark.parametrize(
    "change",
    [{"importance": 101}, {"importance": -1}, {"importance": 80.5}, {"importance": True}],
)
def test_scores_are_whole_numbers_from_0_to_100(change):
    with pytest.raises(apps.ApplicationError):
        review.weighted_total("training", {**TRAINING_SCORES, **change})


def test_every_criterion_and_no_other_is_scored():
    with pytest.raises(apps.ApplicationError):
        review.weighted_total("training", INFERENCE_SCORES)
    missing = dict(TRAINING_SCORES)
    del missing["dataset"]
    with pytest.raises(apps.ApplicationError):
        review.weighted_total("training", missing)


def test_mean_rounds_half_up_to_hundredths():
    result = review.Aggregate(1, [Decimal("80.25"), Decimal("80.28")], 2)
    assert result.mean == Decimal("80.27")  # 80.265, half up (half even would say 80.26)
    three = review.Aggregate(1, [Decimal("84.25"), Decimal("80.10"), Decimal("77.34")], 3)
    assert three.mean == Decimal("80.56")  # 241.69 / 3 = 80.5633…
    assert three.spread == Decimal("6.91")
    assert not three.flagged(review.ReviewSettings(spread_limit=Decimal("6.91")))
    assert three.flagged(review.ReviewSettings(spread_limit=Decimal("6.90")))


@pytest.fixture
def world(db):
    p = people(db)
    p["training"] = make_round(db, p["operator"])
    p["inference"] = make_round(db, p["operator"], "inference")
    return p


def test_the_bonus_items_are_read_from_the_application(db, world):
    training = qualified(db, world["operator"], world["a"], world["training"])
    assert review.bonus_items(training) == ["open_model", "open_dataset", "registrations"]
    proposal = sample.inference()
    proposal["bonus"] = {"mou_link": "https://startup.example.tw/mou.pdf", "registrations": []}
    inference = qualified(
        db,
        world["operator"],
        world["b"],
        world["inference"],
        business_number="04595257",
        proposal=proposal,
    )
    assert review.bonus_items(inference) == ["field_partner_mou"]
    # an uploaded MOU (its record in the proposal, no link) counts the same
    proposal["bonus"] = {
        "mou_file": {"key": "applications/2/f00d/mou.pdf", "name": "mou.pdf", "size": 9},
        "mou_link": " ",
    }
    inference.proposal = json.dumps(proposal)
    assert review.bonus_items(inference) == ["field_partner_mou"]
    proposal["bonus"] = {"mou_file": {}, "mou_link": ""}
    inference.proposal = json.dumps(proposal)
    assert review.bonus_items(inference) == []


def scored(db, world, application, sheets, settings=None):
    settings = settings or review.ReviewSettings()
    for reviewer, scores in zip(("r1", "r2", "r3"), sheets, strict=False):
        review.assign(
            db, world["operator"], application, world[reviewer], now=NOW, settings=settings
        )
        review.submit_sheet(
            db,
            world[reviewer],
            application,
            scores,
            now=NOW,
            settings=settings,
            comment_to_applicant=f"{reviewer} 公開意見",
            private_comment=f"{reviewer} 私下意見",
        )


def test_sheets_aggregate_and_rank(db, world):
    op = world["operator"]
    first = qualified(db, op, world["a"], world["training"])
    second = qualified(db, op, world["b"], world["training"], business_number="04595257")
    low = dict.fromkeys(TRAINING_SCORES, 50)  # 50 + 6 bonus = 56
    scored(db, world, first, [TRAINING_SCORES, TRAINING_SCORES, low])
    scored(db, world, second, [TRAINING_SCORES] * 3)
    result = review.aggregate(db, first)
    assert result.totals == [Decimal("84.25"), Decimal("84.25"), Decimal("56.00")]
    assert result.mean == Decimal("74.83")  # 224.50 / 3 = 74.8333…
    assert result.spread == Decimal("28.25") and result.flagged(review.ReviewSettings())
    rows = review.ranking(db, op, world["training"])
    assert [(r["application_id"], r["rank"], r["flagged"]) for r in rows] == [
        (second.id, 1, False),
        (first.id, 2, True),
    ]
    assert rows[0]["mean"] == Decimal("84.25")
    with pytest.raises(apps.PermissionDenied):
        review.ranking(db, world["r1"], world["training"])


def test_ties_go_to_startups(db, world):
    op = world["operator"]
    old = sample.company("04595257", founding_date="2010-01-01")
    first = qualified(db, op, world["b"], world["training"], business_number="04595257")
    first.company_data = json.dumps(old)
    first.startup_priority = False
    second = qualified(db, op, world["a"], world["training"])
    scored(db, world, first, [TRAINING_SCORES] * 3)
    scored(db, world, second, [TRAINING_SCORES] * 3)
    rows = review.ranking(db, op, world["training"])
    assert [r["application_id"] for r in rows] == [second.id, first.id]


def test_n_reviewers_configurable(db, world):
    application = qualified(db, world["operator"], world["a"], world["training"])
    two = review.ReviewSettings(reviewers_per_application=2)
    review.assign(db, world["operator"], application, world["r1"], now=NOW, settings=two)
    review.assign(db, world["operator"], application, world["r2"], now=NOW, settings=two)
    with pytest.raises(apps.ApplicationError, match="2 reviewers"):
        review.assign(db, world["operator"], application, world["r3"], now=NOW, settings=two)
    with pytest.raises(apps.ApplicationError, match="already"):
        review.assign(db, world["operator"], application, world["r1"], now=NOW)
    with pytest.raises(apps.ApplicationError, match="not a reviewer"):
        review.assign(db, world["operator"], application, world["b"], now=NOW)
    with pytest.raises(apps.PermissionDenied):
        review.assign(db, world["r1"], application, world["r3"], now=NOW)


def test_obvious_conflicts_block_the_assignment(db, world):
    application = qualified(db, world["operator"], world["a"], world["training"])
    colleague = account(db, "colleague", email="someone@Startup.example.tw", reviewer=True)
    with pytest.raises(review.ConflictOfInterest, match="startup.example.tw"):
        review.assign(db, world["operator"], application, colleague, now=NOW)
    review.set_profile(
        db,
        world["operator"],
        world["r1"],
        affiliation="新創應用",
        business_number="22099131",
        now=NOW,
    )
    with pytest.raises(review.ConflictOfInterest, match="22099131"):
        review.assign(db, world["operator"], application, world["r1"], now=NOW)
    # a public mail provider is not a company
    gmail_applicant = qualified(
        db,
        world["operator"],
        account(db, "g", email="founder@gmail.com"),
        world["training"],
        business_number="04595257",
    )
    gmail_reviewer = account(db, "gr", email="prof@gmail.com", reviewer=True)
    assert review.obvious_conflicts(db, gmail_reviewer, gmail_applicant) == []
    review.assign(db, world["operator"], gmail_applicant, gmail_reviewer, now=NOW)


def test_a_recused_reviewer_cannot_open_or_score(db, world):
    application = qualified(db, world["operator"], world["a"], world["training"])
    review.assign(db, world["operator"], application, world["r1"], now=NOW)
    seen = review.open_for_review(db, world["r1"], application.id)
    assert seen["company"]["business_number"] == "22099131"
    review.submit_sheet(db, world["r1"], application, TRAINING_SCORES, now=NOW)
    assert review.aggregate(db, application).totals == [Decimal("84.25")]
    review.declare_conflict(db, world["r1"], application, reason="曾任該公司顧問", now=NOW)
    with pytest.raises(apps.PermissionDenied):
        review.open_for_review(db, world["r1"], application.id)
    with pytest.raises(apps.PermissionDenied):
        apps.get(db, world["r1"], application.id)
    with pytest.raises(apps.PermissionDenied):
        review.submit_sheet(db, world["r1"], application, TRAINING_SCORES, now=NOW)
    assert review.aggregate(db, application).totals == []  # the sheet no longer counts
    # the place is free for another reviewer; an unassigned reviewer cannot open it
    with pytest.raises(apps.PermissionDenied):
        review.open_for_review(db, world["r2"], application.id)
    review.assign(db, world["operator"], application, world["r2"], now=NOW)
    assert review.open_for_review(db, world["r2"], application.id)["id"] == application.id


def test_inference_pass_mark(db, world):
    op = world["operator"]
    passing = qualified(db, op, world["a"], world["inference"])
    failing = qualified(db, op, world["b"], world["inference"], business_number="04595257")
    scored(db, world, passing, [INFERENCE_SCORES] * 2)  # 82.60 each
    with pytest.raises(apps.ApplicationError, match="2/3"):
        review.decide_inference(db, op, passing, tier="L1", now=NOW)
    scored_third = dict.fromkeys(INFERENCE_SCORES, 61)  # 61 + 6 = 67.00
    review.assign(db, op, passing, world["r3"], now=NOW)
    review.submit_sheet(db, world["r3"], passing, scored_third, now=NOW)
    # mean (82.60 + 82.60 + 67.00) / 3 = 77.40
    assert review.aggregate(db, passing).mean == Decimal("77.40")
    mark = review.ReviewSettings(inference_pass_mark=Decimal("77.40"))
    assert review.decide_inference(db, op, passing, tier="L2", now=NOW, settings=mark)
    assert (passing.status, passing.tier) == (S.SELECTED, "L2")
    scored(db, world, failing, [INFERENCE_SCORES, INFERENCE_SCORES, scored_third])
    strict = review.ReviewSettings(inference_pass_mark=Decimal("77.41"))
    assert not review.decide_inference(db, op, failing, tier="L2", now=NOW, settings=strict)
    assert failing.status == S.REJECTED and failing.tier is None
    with pytest.raises(apps.ApplicationError):
        review.record_meeting_decision(db, op, passing, selected=True, tier="L1", now=NOW)


def test_training_meeting_decision_and_comments(db, world):
    op = world["operator"]
    application = qualified(db, op, world["a"], world["training"])
    scored(db, world, application, [TRAINING_SCORES] * 3)
    assert review.comments_for_applicant(db, world["a"], application.id) == []  # not yet
    with pytest.raises(apps.PermissionDenied):
        review.record_meeting_decision(
            db, world["r1"], application, selected=True, tier="L3", now=NOW
        )
    with pytest.raises(apps.ApplicationError, match="L1"):
        review.record_meeting_decision(db, op, application, selected=True, tier="L4", now=NOW)
    review.record_meeting_decision(db, op, application, selected=True, tier="L3", now=NOW)
    assert (application.status, application.tier) == (S.SELECTED, "L3")
    with pytest.raises(apps.TransitionNotAllowed):  # the review is over
        review.submit_sheet(db, world["r1"], application, TRAINING_SCORES, now=NOW)
    comments = review.comments_for_applicant(db, world["a"], application.id)
    assert comments == ["r1 公開意見", "r2 公開意見", "r3 公開意見"]
    with pytest.raises(apps.PermissionDenied):
        review.comments_for_applicant(db, world["b"], application.id)
