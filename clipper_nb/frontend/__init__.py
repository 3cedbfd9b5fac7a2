"""The frontend: Clipper's query API, the management API, auth, the standalone server and the dashboard page."""
