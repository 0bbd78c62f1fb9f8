"""Transparency-log formats shared by the relay that writes proofs and the verifier
that checks them: RFC 6962 Merkle trees (merkle), C2SP signed notes (note) and
C2SP tlog-checkpoints (checkpoint). Nothing here imports the writer."""
