"""The relay side: outbox readers, the immutable log, the chain, exports and verification."""
