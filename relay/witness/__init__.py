"""Witnesses (C2SP tlog-witness, tlog-cosignature): an independent party cosigns a
chain's checkpoint only when it extends the last one it cosigned, so an insider who
rewrites the log and re-signs it with the log's own key is refused and caught.

cosignature: the witness key and cosignature/v1 lines; state: the witness's durable
record per origin; service: the add-checkpoint rules; server: HTTP; client: the
relay's side (FLAGTRAIL_WITNESSES); package: what verify checks."""
