"""Alembic environment: the controller passes its own connection in
config.attributes, so migrations run inside the caller's transaction."""

from alembic import context

from controller.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
