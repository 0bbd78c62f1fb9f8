"""The read-only evidence API (`flagtrail serve`): ``flagtrail.api.app.create_app``.

Nothing is imported here, so that `flagtrail token` reads the token table without
loading the web framework."""
