"""The approvers' web page under ``/ui``: server-rendered HTML over the same ``App`` calls.

A person signs in with an API token and gets a server-side session (``sessions``);
every form carries the session's CSRF token and every POST is checked for its origin
and content type (``guard``); the pages show the stored state and decide through
``App.decide`` (``pages``), rendering artifacts readably (``render``). The run page
follows the run live with Server-Sent Events from the durable log, authenticated by
the session. See docs/web.md.
"""
