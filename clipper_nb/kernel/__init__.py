"""The kernel side: the Python client, server discovery, the embedded server, magics, the load generator.

Talks to a frontend over HTTP only; never imports the server side.
"""
