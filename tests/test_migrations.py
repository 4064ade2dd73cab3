"""The Alembic migrations: idempotent, and exactly the schema that the models declare."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Integer, MetaData, inspect, select, text

from quota_service import db as database
from quota_service.models import Account, Base, UsageSession
from tests.conftest import at

TABLES = {
    "accounts",
    "api_keys",
    "application_status_changes",
    "applications",
    "awards",
    "qualification_results",
    "reviewer_assignments",
    "reviewer_profiles",
    "rounds",
    "score_sheets",
    "supplement_requests",
    "audit_events",
    "closing_reports",
    "companies",
    "ledger_entries",
    "memberships",
    "projects",
    "purges",
    "notices",
    "usage_sessions",
    "violations",
    "violation_entries",
    "sanctions",
}


def alembic_config(connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(database.MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head() -> str:
    config = Config()
    config.set_main_option("script_location", str(database.MIGRATIONS))
    return ScriptDirectory.from_config(config).get_current_head()


def current_revision(engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def schema(engine) -> dict:
    inspector = inspect(engine)
    return {
        table: (
            [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)],
            sorted(i["name"] for i in inspector.get_indexes(table)),
            sorted(tuple(u["column_names"]) for u in inspector.get_unique_constraints(table)),
        )
        for table in sorted(inspector.get_table_names())
    }


def test_upgrade_reaches_head_with_every_table(engine):
    assert head() == "0006"
    assert current_revision(engine) == head()
    assert set(inspect(engine).get_table_names()) == TABLES | {"alembic_version"}


def test_upgrading_twice_is_a_no_op(engine, session_factory):
    with database.transaction(session_factory) as db:
        db.add(Account(username="keeper", created_at=at("2026-11-28 00:00:00")))
    before = schema(engine)
    database.upgrade(engine)
    database.upgrade(engine)
    assert schema(engine) == before
    assert current_revision(engine) == head()
    with engine.connect() as connection:
        assert connection.execute(text("select count(*) from alembic_version")).scalar() == 1
    with database.transaction(session_factory) as db:
        assert db.scalars(select(Account.username)).all() == ["keeper"]


def test_the_migrated_schema_matches_the_models(engine):
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
    assert differences == []


def test_the_comparison_does_see_a_difference(engine):
    # the check above can fail: a model with one more column differs from the database
    changed = MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(changed)
    changed.tables["projects"].append_column(Column("extra_field", Integer, nullable=True))
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, changed)
    assert [(d[0], d[2], d[3].name) for d in differences] == [
        ("add_column", "projects", "extra_field")
    ]


def test_the_models_declare_the_tables_the_migration_creates():
    assert set(Base.metadata.tables) == TABLES


def test_downgrade_to_base_and_up_again(engine):
    before = schema(engine)
    with engine.begin() as connection:
        command.downgrade(alembic_config(connection), "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    assert current_revision(engine) is None
    database.upgrade(engine)
    assert schema(engine) == before


def test_upgrading_a_first_release_database_keeps_its_data(database_url):
    # a database created by revision 0001 (no last_seen_at) with a session in it
    engine = database.make_engine(database_url)
    database.upgrade(engine, "0001")
    with engine.begin() as connection:
        connection.execute(
            text(
                "insert into companies (id, name, business_number, created_at)"
                " values (1, 'c', '04595257', '2026-11-28 00:00:00')"
            )
        )
        connection.execute(
            text(
                "insert into accounts (id, username, email, display_name, is_operator,"
                " is_reviewer, created_at) values (1, 'a', '', '', false, false, '2026-11-28 00:00:00')"
            )
        )
        connection.execute(
            text(
                "insert into projects (id, company_id, name, category, status,"
                " max_gpus_per_server, created_at)"
                " values (1, 1, 'p', 'training', 'approved', 2, '2026-11-28 00:00:00')"
            )
        )
        connection.execute(
            text(
                "insert into usage_sessions (id, project_id, account_id, username, server_name,"
                " gpu_vendor, gpu_count, devices, simulated, interval_seconds, started_at,"
                " charged_seconds, charged_periods, stop_reason) values (1, 1, 1, 'a', '',"
                " 'nvidia', 2, 'nvidia:0,nvidia:1', true, 60, '2026-11-28 00:00:00', 120, 2, '')"
            )
        )
    database.upgrade(engine)
    assert current_revision(engine) == head()
    with database.transaction(database.make_session_factory(engine)) as db:
        session = db.get(UsageSession, 1)
        assert (session.gpu_count, session.charged_seconds, session.last_seen_at) == (2, 120, None)
    engine.dispose()
