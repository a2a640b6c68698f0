"""Stand-ins for the world outside devflow in tests: a fake model server the real agent CLIs
talk to (``model_server``), what it answers (``dialogue``, ``wire``), and personas and
requirements that point the CLIs at it (``agents``)."""
