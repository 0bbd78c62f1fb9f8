"""What the producer stores about people: keyed pseudonyms, and their vault entries.

``Outbox.record`` judges a change on the verified identities, then calls
``Privacy.protect``: on a pseudonymous chain the actor and approver become
``id:<hex>`` (producers/pseudonyms.py) and each new subject is sealed into the
vault (producers/vault.py); the reason passes the policy's redaction.

Which chains are pseudonymous (``FLAGTRAIL_PSEUDONYMS``, default ``auto``):

- ``auto``: a chain's first record decides. A chain with no outbox rows and no
  relay checkpoint is new and stores pseudonyms; a chain that already has
  records stores names as before. The decision is written to the outbox
  database (``flagtrail_privacy_chains``) in the same transaction as that first
  record, so it survives restarts and later outbox purges.
- ``on``: pseudonyms from now on, also on a chain that has stored names so far.
- ``off``: names on a chain that has not decided yet; refused on a chain that
  stores pseudonyms (that would put names into it silently).

Key files: on a pseudonymous chain the pseudonym key and the vault key are
created (0600) on first use when the database has never seen one; once it has,
a missing file or another key is a ConfigError, never a fresh key and never a
raw name. ``flagtrail identity keygen`` creates both ahead of time, for
deployments where several hosts must share them.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, event, select

from producers import vault
from producers.errors import ConfigError
from producers.pseudonyms import SecretKey, create_key, is_pseudonym, pseudonym, read_key
from producers.redaction import Redactor
from producers.schema import outbox as outbox_table
from producers.schema import relay_state

if TYPE_CHECKING:
    from producers.outbox import Outbox

PSEUDONYMOUS, PLAIN = "pseudonymous", "plain"
MODES = ("auto", "on", "off")


def setting(name: str) -> str:
    from flagtrail.settings import setting as read

    return read(name)


def load_or_create_key(conn: Connection, kind: str, path: Path) -> SecretKey:
    """The key in ``path``; created only when this database never used a key of the kind."""
    key = read_key(path, kind)
    if key is None:
        known = vault.known_key_id(conn, kind)
        if known is not None:
            variable = f"FLAGTRAIL_{kind.upper()}_KEY_PATH"
            raise ConfigError(
                f"{kind} key {path} is missing, but this database uses one ({known}): "
                f"restore the file or point {variable} at it (a new key is never made "
                "for data that already has one)"
            )
        key = create_key(path, kind)
    vault.check_key(conn, key)
    return key


def key_path(kind: str) -> Path:
    return Path(setting(f"FLAGTRAIL_{kind.upper()}_KEY_PATH"))


class Privacy:
    """One Outbox's view of its chain's privacy mode, keys and vault."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.redact = Redactor.from_policy(outbox.policy.privacy, outbox.policy.source)
        self.setting = setting("FLAGTRAIL_PSEUDONYMS").strip().lower()
        if self.setting not in MODES:
            raise ConfigError(f"FLAGTRAIL_PSEUDONYMS={self.setting!r}: use auto, on or off")
        self._pseudonymous: bool | None = None
        self._pseudonym_key: SecretKey | None = None
        self._vault_key: SecretKey | None = None
        self._stored: dict[str, str] = {}  # pseudonym -> day its vault row was last marked
        # subjects written inside a caller's transaction that has not ended yet
        self._pending: weakref.WeakKeyDictionary[Connection, set[str]] = weakref.WeakKeyDictionary()

    # -- mode and keys ---------------------------------------------------------------------
    def pseudonymous(self, conn: Connection) -> bool:
        if self._pseudonymous is None:
            self._pseudonymous = self._decide(conn)
        if self._pseudonymous and self._pseudonym_key is None:
            self._pseudonym_key = load_or_create_key(conn, "pseudonym", key_path("pseudonym"))
            self._vault_key = load_or_create_key(conn, "vault", key_path("vault"))
        return self._pseudonymous

    def _decide(self, conn: Connection) -> bool:
        chain = self.outbox.chain_id
        recorded = vault.chain_mode(conn, chain)
        if recorded == PSEUDONYMOUS:
            if self.setting == "off":
                raise ConfigError(
                    f"chain {chain!r} stores pseudonyms; FLAGTRAIL_PSEUDONYMS=off would put "
                    "names into it: unset it or use a new chain"
                )
            return True
        if recorded == PLAIN:
            if self.setting == "on":
                self._durably(
                    conn,
                    lambda c: vault.switch_chain_mode(
                        c, chain, PSEUDONYMOUS, "FLAGTRAIL_PSEUDONYMS=on"
                    ),
                )
                return True
            return False
        if self.setting != "auto":
            mode, why = (
                (PSEUDONYMOUS if self.setting == "on" else PLAIN),
                (f"FLAGTRAIL_PSEUDONYMS={self.setting}"),
            )
        elif self._has_history(conn):
            mode, why = PLAIN, "the chain had records before pseudonyms existed"
        else:
            mode, why = PSEUDONYMOUS, "new chain"
        decided: list[str] = []
        self._durably(conn, lambda c: decided.append(vault.record_chain_mode(c, chain, mode, why)))
        return decided[-1] == PSEUDONYMOUS

    def _has_history(self, conn: Connection) -> bool:
        chain = self.outbox.chain_id
        rows = select(outbox_table.c.id).where(outbox_table.c.chain_id == chain).limit(1)
        relayed = select(relay_state.c.chain_id).where(relay_state.c.chain_id == chain)
        return conn.execute(rows).first() is not None or conn.execute(relayed).first() is not None

    def existing_keys(self, conn: Connection) -> tuple[SecretKey, SecretKey]:
        """Both keys for reading the vault back; never created here (nothing to read)."""
        if self._pseudonym_key is None or self._vault_key is None:
            keys = []
            for kind in ("pseudonym", "vault"):
                key = read_key(key_path(kind), kind)
                if key is None:
                    raise ConfigError(
                        f"{kind} key {key_path(kind)} not found: point "
                        f"FLAGTRAIL_{kind.upper()}_KEY_PATH at the key this database uses"
                    )
                vault.check_key(conn, key)
                keys.append(key)
            self._pseudonym_key, self._vault_key = keys
        return self._pseudonym_key, self._vault_key

    @property
    def pseudonym_key(self) -> SecretKey:
        assert self._pseudonym_key is not None, "call pseudonymous(conn) first"
        return self._pseudonym_key

    @property
    def vault_key(self) -> SecretKey:
        assert self._vault_key is not None, "call pseudonymous(conn) first"
        return self._vault_key

    # -- people ----------------------------------------------------------------------------
    def person(self, conn: Connection, identity: str) -> str:
        """What the chain stores for ``identity``: its pseudonym (sealed into the vault)
        on a pseudonymous chain, else the identity itself."""
        if not self.pseudonymous(conn) or not identity:
            return identity
        alias = pseudonym(self.pseudonym_key.material, identity)
        self._remember(conn, alias, identity)
        return alias

    def protect(
        self, conn: Connection, actor: str, approver: str | None, reason: str
    ) -> tuple[str, str | None, str]:
        """The stored actor, approver and reason of a change the policy accepted."""
        return (
            self.person(conn, actor),
            self.person(conn, approver) if approver else approver,
            self.redact(reason) if self.redact.active else reason,
        )

    def protect_rejection(self, conn: Connection, record: dict[str, Any]) -> None:
        """A rejected attempt names who tried in its fields and its policy message:
        both get the pseudonyms (the PolicyError raised to the caller keeps names)."""
        if self.redact.active:
            record["reason"] = self.redact(record["reason"])
        if not self.pseudonymous(conn):
            return
        replaced: dict[str, str] = {}
        for field in ("actor", "approver"):
            typed = record.get(field)
            if not typed:
                continue
            canonical = self.outbox.identities.resolve(typed) or typed
            alias = self.person(conn, canonical)
            record[field] = alias
            replaced.update({typed: alias, canonical: alias})
        meta = record.get("meta")
        if isinstance(meta, dict) and isinstance(meta.get("message"), str):
            meta["message"] = scrub_names(meta["message"], replaced)

    def operator_identity(self, conn: Connection, stated: str) -> str | None:
        """The identity behind the operator a signed statement names (its pseudonym on
        a pseudonymous chain, read back from the vault); the statement's own text when
        it cannot be read back, so that the operator check refuses it; None when a
        pseudonymous chain's statement names a person instead of a pseudonym."""
        if not self.pseudonymous(conn):
            return stated
        if not is_pseudonym(stated):
            return None
        found = vault.lookup(conn, self.vault_key, [stated])[stated]
        if (
            found.identity is None
            or pseudonym(self.pseudonym_key.material, found.identity) != stated
        ):
            return stated
        return found.identity

    # -- durable writes -----------------------------------------------------------------------
    def _remember(self, conn: Connection, alias: str, identity: str) -> None:
        today = vault.day_of(vault.now_us())
        if self._stored.get(alias) == today:
            return
        pending = self._pending.setdefault(conn, set())
        if alias in pending:  # written earlier in this transaction, durable with it
            return
        key = self.vault_key
        pending.add(alias)

        def mark() -> None:
            self._stored[alias] = today
            pending.discard(alias)

        self._durably(conn, lambda c: vault.store_subject(c, key, alias, identity), mark)

    def _durably(
        self,
        conn: Connection,
        write: Callable[[Connection], object],
        done: Callable[[], None] | None = None,
    ) -> None:
        """Run ``write`` so that it outlives the caller's transaction: a rejection is
        durable whatever the caller does next (producers/journal.py), so the chain's
        mode and the subjects it names must be too. On its own connection when it can;
        on SQLite while the caller holds the one write lock (a second connection would
        wait for it forever) inside the caller's transaction, and again on its own
        connection right after a rollback. ``done`` runs once the write is durable."""
        from producers.outbox import _sqlite_holds_write_lock

        engine = self.outbox.engine
        if not _sqlite_holds_write_lock(conn):
            with engine.begin() as own:
                write(own)
            if done is not None:
                done()
            return
        write(conn)

        def committed(_conn: Connection) -> None:
            if done is not None:
                done()

        def rolled_back(rolling: Connection) -> None:
            rolling.connection.driver_connection.rollback()  # releases the write lock
            with engine.begin() as own:
                write(own)
            if done is not None:
                done()

        event.listen(conn, "commit", committed, once=True)
        event.listen(conn, "rollback", rolled_back, once=True)


def scrub_names(text: str, names: dict[str, str]) -> str:
    """``text`` with each name (quoted as repr, as policy messages quote, or bare
    when at least three characters long) replaced by its pseudonym."""
    for name in sorted(names, key=len, reverse=True):
        text = text.replace(repr(name), repr(names[name]))
        if len(name) >= 3:
            text = text.replace(name, names[name])
    return text
