"""`payrail loadtest`: load and chaos scenarios with money invariants, on Locust.

Locust monkeypatches the process with gevent when it is imported, so only `engine`,
`scenarios` and `receiver` import it (or gevent), and only `command.run` imports those, after
the arguments are checked. Every other module here is plain Python that tests import freely.
"""
