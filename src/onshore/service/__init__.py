"""``onshore serve``: a party's service, the only way another party reaches it.

:func:`~onshore.service.app.create_app` builds the app (signed messages checked, answers
signed, refusals recorded); :func:`~onshore.service.server.run_server` serves it over mutual
TLS, with the client's certificate known to the app.
"""
