"""Alembic migrations of the teachloop schema, run by ``Database.migrate()``.

Revisions are numbered ``0001``, ``0002``, ... in ``versions/``; each later
package that adds tables ships one new revision whose ``down_revision`` is the
previous head. See ``docs/store.md`` for how to write one.
"""
