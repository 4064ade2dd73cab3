"""The audit trail: one row per change, written in the same transaction as the change."""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy.orm import Session

from .models import AuditEvent


def row(
    *,
    actor: str,
    action: str,
    subject_type: str,
    subject_id: object,
    at: datetime,
    **detail: object,
) -> dict:
    """An audit row as a dict, for bulk inserts in the same transaction as the change."""
    return {
        "at": at,
        "actor": actor,
        "action": action,
        "subject_type": subject_type,
        "subject_id": str(subject_id),
        "detail": json.dumps(detail, ensure_ascii=False, default=str, sort_keys=True),
    }


def record(
    db: Session,
    *,
    actor: str,
    action: str,
    subject_type: str,
    subject_id: object,
    at: datetime,
    **detail: object,
) -> AuditEvent:
    event = AuditEvent(
        **row(
            actor=actor,
            action=action,
            subject_type=subject_type,
            subject_id=subject_id,
            at=at,
            **detail,
        )
    )
    db.add(event)
    return event
