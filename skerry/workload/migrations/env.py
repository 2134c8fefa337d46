"""Alembic environment of the catalog: run by ``Catalog.upgrade()``, never by hand.

The connection comes in ``config.attributes["connection"]`` (so SQLite's pragmas and
the caller's transaction apply); ``alembic`` on the command line is not needed.
"""

from alembic import context

from skerry.workload.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata,
                  render_as_batch=connection.dialect.name == "sqlite")  # SQLite alters tables by copy
with context.begin_transaction():
    context.run_migrations()
