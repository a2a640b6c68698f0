"""``devflow daemon``: an opt-in resident process that has imported devflow once and forks
a child per command, so that a command's start-up is a thin client's.

Standard library only, below every other layer: the CLI gives the server what a child
runs (``devflow.cli.forkserver``) and the console script's client
(``devflow.cli.client``) hands commands to it. ``wire`` is where the socket is and how
requests and file descriptors cross it, ``stamp`` what code the server imported,
``server`` the server's loop, ``child`` a forked child taking on its client's process
attributes, ``control`` start, status and stop. docs/decisions.md (The daemon) says why
and what it guards.
"""
