"""Build-time only: make editable installs enable the Jupyter server extension too.

A regular wheel ships ``etc/jupyter/jupyter_server_config.d/clipper_nb.json`` (the
``data-files`` in pyproject.toml), which is what enables the extension. Setuptools'
editable wheels mean to install data files "as non editable" as well, but ask the
distribution for ``has_data`` where the method is ``has_data_files`` (setuptools 64-84),
so ``pip install -e .`` silently skipped the file and Jupyter never loaded the extension.
This command runs ``install_data`` into the editable wheel when that check misses it.
Nothing here is imported at run time.
"""

from __future__ import annotations

from setuptools.command.editable_wheel import editable_wheel


class EditableWheel(editable_wheel):
    """``editable_wheel`` that also installs ``data_files`` (the Jupyter config)."""

    def _run_install(self, category: str) -> None:
        if category == "data" and getattr(self.distribution, "has_data", None) is None:
            if self.distribution.has_data_files():
                self.run_command("install_data")
            return
        super()._run_install(category)
