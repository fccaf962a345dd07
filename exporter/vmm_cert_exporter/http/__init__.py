"""The one HTTP layer of the exporter and the receiver (docs/architecture.md, "One HTTP layer").

- ``server.py``: listening, accepting, the connection cap, the event loop and its threads;
- ``connection.py``: one connection's phases under their deadlines: TLS handshake, request
  head and body (parsed by h11), authentication, the handler, the answer, lingering close;
- ``limits.py``: the deadlines and sizes; ``tls_context.py``: the server's TLS context;
- ``credentials.py``: Basic users with bcrypt, the receiver's bearer token and password;
- ``gate.py``: what the web config file puts in front of every handler;
- ``wsgi.py``: the handlers' side (WSGI apps).

The exporter and the receiver supply only their handlers.
"""
