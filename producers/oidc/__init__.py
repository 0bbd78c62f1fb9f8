"""Identities proven by an OpenID Connect provider (the policy's ``[oidc]`` table).

settings.py   the policy table           jwks.py       discovery and the key cache
tokens.py     verifying one JWT          approval.py   binding an approval to one change
replay.py     spent approval token ids   authenticate.py  the identities a record states
"""
