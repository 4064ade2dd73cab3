"""The Alembic migrations: idempotent, and exactly the schema that the models declare."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Integer, MetaData, inspect, select, text

from quota_service import db as database
from quota_service.models import Account, Base
from tests.conftest import at

TABLES = {
    "accounts",
    "audit_events",
    "companies",
    "ledger_entries",
    "memberships",
    "projects",
    "usage_sessions",
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
    assert head() == "0001"
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
