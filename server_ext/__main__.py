"""``python -m clipper_nb.server_ext``: a Jupyter server started by this extension (like ``jupyter lab``).

``python -m clipper_nb.server_ext --help-all`` lists the server's options and every
``--ClipperNB.*`` knob, which ``jupyter server --help-all`` cannot: it prints its help
before it looks for extensions.
"""

from __future__ import annotations

from .app import ClipperNBExtension

if __name__ == "__main__":
    ClipperNBExtension.launch_instance()
