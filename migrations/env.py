"""Alembic environment. tracker.db.migrate() hands us an open connection (already holding the migration lock);
the alembic CLI gets its URL from TRACKER_DB instead."""

from alembic import context
from sqlalchemy import Connection

from tracker.models import Base

config = context.config
target_metadata = Base.metadata


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    from tracker.db import open_engine
    from tracker.settings import Settings

    engine = open_engine(Settings.from_env(), migrate=False)
    with engine.connect() as conn:
        run(conn)
