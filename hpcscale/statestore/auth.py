"""API tokens: only a token's SHA-256 digest is stored, so a copy of the database grants nothing.

A token has a role (admin, manager, worker, submitter) and, optionally, the queues it may use;
the server's dependencies check them.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Sequence

from sqlalchemy import insert, select

from hpcscale.models import Role, TokenInfo
from hpcscale.statestore.database import StoreBase
from hpcscale.statestore.schema import tokens


class Auth(StoreBase):
    """The `tokens` table."""

    def create_token(self, role: Role, queues: Sequence[str] | None = None, name: str = "") -> str:
        """A new random token; only its SHA-256 digest is stored."""
        token = secrets.token_urlsafe(32)
        self.add_token(token, role, queues, name)
        return token

    def add_token(
        self, token: str, role: Role, queues: Sequence[str] | None = None, name: str = ""
    ) -> None:
        with self._write() as conn:
            conn.execute(
                insert(tokens).values(
                    digest=digest(token),
                    role=role.value,
                    queues=json.dumps(list(queues)) if queues is not None else None,
                    name=name,
                    created_at=self.clock(),
                    revoked=0,
                )
            )

    def verify_token(self, token: str) -> TokenInfo | None:
        with self._read() as conn:
            row = conn.execute(
                select(tokens).where(tokens.c.digest == digest(token), tokens.c.revoked == 0)
            ).first()
        if row is None:
            return None
        return TokenInfo(
            id=row.id,
            role=Role(row.role),
            queues=json.loads(row.queues) if row.queues is not None else None,
            name=row.name,
        )

    def has_admin_token(self) -> bool:
        with self._read() as conn:
            return (
                conn.execute(
                    select(tokens.c.id).where(tokens.c.role == Role.ADMIN.value).limit(1)
                ).first()
                is not None
            )


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
