"""Repositories: plain classes over a caller-owned ``Session``; they flush, never commit."""

from teachloop.store.repos.audit import AuditLog
from teachloop.store.repos.keys import ApiKeys, CreatedKey
from teachloop.store.repos.tenancy import OrgSummary, Tenancy, clean_email, parse_role

__all__ = ["ApiKeys", "AuditLog", "CreatedKey", "OrgSummary", "Tenancy", "clean_email", "parse_role"]
