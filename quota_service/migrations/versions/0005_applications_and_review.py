"""applications and review

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rounds",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("category", sa.String(length=20), nullable=False),
        sa.Column("opens_at", sa.DateTime(), nullable=False),
        sa.Column("closes_at", sa.DateTime(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "reviewer_profiles",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("affiliation", sa.String(length=200), nullable=False),
        sa.Column("business_number", sa.String(length=8), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("account_id"),
    )
    op.create_table(
        "applications",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("round_id", sa.Integer(), nullable=False),
        sa.Column("category", sa.String(length=20), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=30), nullable=False),
        sa.Column("business_number", sa.String(length=8), nullable=False),
        sa.Column("company_name", sa.String(length=200), nullable=False),
        sa.Column("open_key", sa.String(length=8), nullable=True),
        sa.Column("company_data", sa.Text(), nullable=False),
        sa.Column("consent", sa.Text(), nullable=False),
        sa.Column("declarations", sa.Text(), nullable=False),
        sa.Column("proposal", sa.Text(), nullable=False),
        sa.Column("startup_priority", sa.Boolean(), nullable=False),
        sa.Column("tier", sa.String(length=4), nullable=True),
        sa.Column("project_id", sa.Integer(), nullable=True),
        sa.Column("submitted_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
        ),
        sa.ForeignKeyConstraint(
            ["round_id"],
            ["rounds.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("round_id", "category", "open_key", name="uq_application_open"),
    )
    with op.batch_alter_table("applications", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_applications_account_id"), ["account_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_applications_round_id"), ["round_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_applications_status"), ["status"], unique=False)

    op.create_table(
        "application_status_changes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("application_id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("old_status", sa.String(length=30), nullable=False),
        sa.Column("new_status", sa.String(length=30), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["application_id"],
            ["applications.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("application_status_changes", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_application_status_changes_application_id"),
            ["application_id"],
            unique=False,
        )

    op.create_table(
        "awards",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("application_id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("tier", sa.String(length=4), nullable=False),
        sa.Column("points", sa.Integer(), nullable=False),
        sa.Column("notice_date", sa.DateTime(), nullable=False),
        sa.Column("window_start", sa.DateTime(), nullable=False),
        sa.Column("window_end", sa.DateTime(), nullable=False),
        sa.Column("trusted_networks", sa.Text(), nullable=False),
        sa.Column("awarded_by", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["application_id"],
            ["applications.id"],
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("application_id"),
        sa.UniqueConstraint("project_id"),
    )
    op.create_table(
        "qualification_results",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("application_id", sa.Integer(), nullable=False),
        sa.Column("criterion", sa.String(length=40), nullable=False),
        sa.Column("automatic", sa.String(length=10), nullable=False),
        sa.Column("evidence", sa.Text(), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=True),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("decided_by", sa.String(length=255), nullable=False),
        sa.Column("decided_at", sa.DateTime(), nullable=True),
        sa.Column("checked_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["application_id"],
            ["applications.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("application_id", "criterion"),
    )
    with op.batch_alter_table("qualification_results", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_qualification_results_application_id"), ["application_id"], unique=False
        )

    op.create_table(
        "reviewer_assignments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("application_id", sa.Integer(), nullable=False),
        sa.Column("reviewer_id", sa.Integer(), nullable=False),
        sa.Column("assigned_by", sa.String(length=255), nullable=False),
        sa.Column("assigned_at", sa.DateTime(), nullable=False),
        sa.Column("conflict_declared", sa.Text(), nullable=False),
        sa.Column("recused_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["application_id"],
            ["applications.id"],
        ),
        sa.ForeignKeyConstraint(
            ["reviewer_id"],
            ["accounts.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("application_id", "reviewer_id"),
    )
    with op.batch_alter_table("reviewer_assignments", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_reviewer_assignments_application_id"), ["application_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_reviewer_assignments_reviewer_id"), ["reviewer_id"], unique=False
        )

    op.create_table(
        "supplement_requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("application_id", sa.Integer(), nullable=False),
        sa.Column("fields", sa.Text(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("due_before", sa.DateTime(), nullable=False),
        sa.Column("requested_by", sa.String(length=255), nullable=False),
        sa.Column("requested_at", sa.DateTime(), nullable=False),
        sa.Column("resolved_at", sa.DateTime(), nullable=True),
        sa.Column("expired_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["application_id"],
            ["applications.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("supplement_requests", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_supplement_requests_application_id"), ["application_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_supplement_requests_due_before"), ["due_before"], unique=False
        )

    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("award_id", sa.Integer(), nullable=False),
        sa.Column("company_id", sa.Integer(), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("created_by", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.Column("revoked_by", sa.String(length=255), nullable=False),
        sa.ForeignKeyConstraint(
            ["award_id"],
            ["awards.id"],
        ),
        sa.ForeignKeyConstraint(
            ["company_id"],
            ["companies.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key_hash"),
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_keys_award_id"), ["award_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_api_keys_company_id"), ["company_id"], unique=False)

    op.create_table(
        "score_sheets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("assignment_id", sa.Integer(), nullable=False),
        sa.Column("scores", sa.Text(), nullable=False),
        sa.Column("bonus_items", sa.Text(), nullable=False),
        sa.Column("total_hundredths", sa.Integer(), nullable=False),
        sa.Column("comment_to_applicant", sa.Text(), nullable=False),
        sa.Column("private_comment", sa.Text(), nullable=False),
        sa.Column("submitted_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["assignment_id"],
            ["reviewer_assignments.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("assignment_id"),
    )
    with op.batch_alter_table("notices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("application_id", sa.Integer(), nullable=True))
        batch_op.alter_column("project_id", existing_type=sa.INTEGER(), nullable=True)
        batch_op.create_index(
            batch_op.f("ix_notices_application_id"), ["application_id"], unique=False
        )
        batch_op.create_unique_constraint(
            "uq_application_notice_once", ["application_id", "kind", "key"]
        )
        batch_op.create_foreign_key(
            "fk_notices_application_id", "applications", ["application_id"], ["id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("notices", schema=None) as batch_op:
        batch_op.drop_constraint("fk_notices_application_id", type_="foreignkey")
        batch_op.drop_constraint("uq_application_notice_once", type_="unique")
        batch_op.drop_index(batch_op.f("ix_notices_application_id"))
        batch_op.alter_column("project_id", existing_type=sa.INTEGER(), nullable=False)
        batch_op.drop_column("application_id")

    op.drop_table("score_sheets")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_keys_company_id"))
        batch_op.drop_index(batch_op.f("ix_api_keys_award_id"))

    op.drop_table("api_keys")
    with op.batch_alter_table("supplement_requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_supplement_requests_due_before"))
        batch_op.drop_index(batch_op.f("ix_supplement_requests_application_id"))

    op.drop_table("supplement_requests")
    with op.batch_alter_table("reviewer_assignments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_reviewer_assignments_reviewer_id"))
        batch_op.drop_index(batch_op.f("ix_reviewer_assignments_application_id"))

    op.drop_table("reviewer_assignments")
    with op.batch_alter_table("qualification_results", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_qualification_results_application_id"))

    op.drop_table("qualification_results")
    op.drop_table("awards")
    with op.batch_alter_table("application_status_changes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_application_status_changes_application_id"))

    op.drop_table("application_status_changes")
    with op.batch_alter_table("applications", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_applications_status"))
        batch_op.drop_index(batch_op.f("ix_applications_round_id"))
        batch_op.drop_index(batch_op.f("ix_applications_account_id"))

    op.drop_table("applications")
    op.drop_table("reviewer_profiles")
    op.drop_table("rounds")
