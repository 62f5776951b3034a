"""JupyterLab's server for the study's notebooks (`make venv` installs a loader of this file into
<venv>/etc/jupyter/jupyter_server_config.py; Jupyter reads it when any server of the venv starts).

Jupytext's contents manager (the pairing of `jupytext.toml`) with two changes, for the notebooks under
this checkout's notebooks/ only:

- a save writes the .ipynb as the git filter would commit it (nbstripout --keep-id: no outputs,
  execution counts or language_info), so that a saved notebook leaves `git status` clean: git takes
  a working file of another size for a changed one without running the filter;
- opening one adds the language_info that the kernel (this interpreter's ipykernel) would set, so
  that JupyterLab does not mark a just-opened notebook modified when the kernel reports it.
"""

import os

import nbformat
from ipykernel.ipkernel import IPythonKernel
from jupytext import AsyncTextFileContentsManager
from nbstripout import strip_output

NOTEBOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "notebooks")
#: the keys `python -m nbstripout` strips (its defaults in 0.9.1, and `filter.nbstripout.extrakeys`)
STRIPPED_KEYS = [
    "metadata.signature",
    "metadata.widgets",
    "cell.metadata.collapsed",
    "cell.metadata.ExecuteTime",
    "cell.metadata.execution",
    "cell.metadata.heading_collapsed",
    "cell.metadata.hidden",
    "cell.metadata.scrolled",
    "metadata.language_info",
]


class StudyContentsManager(AsyncTextFileContentsManager):
    def _is_study_notebook(self, path):
        os_path = os.path.realpath(self._get_os_path(path.strip("/")))
        return os.path.dirname(os_path) == os.path.realpath(NOTEBOOKS)

    async def get(self, path, content=True, type=None, format=None, **kwargs):
        model = await super().get(path, content=content, type=type, format=format, **kwargs)
        if content and model["type"] == "notebook" and self._is_study_notebook(path):
            model["content"]["metadata"].setdefault("language_info", dict(IPythonKernel.language_info))
        return model

    async def save(self, model, path=""):
        if model.get("type") == "notebook" and model.get("content") and self._is_study_notebook(path):
            model = dict(model, content=strip_output(nbformat.from_dict(model["content"]), keep_output=False,
                                                     keep_count=False, keep_id=True, extra_keys=STRIPPED_KEYS))
        return await super().save(model, path)


c = get_config()  # noqa: F821 -- the name traitlets gives a config file
c.ServerApp.contents_manager_class = StudyContentsManager
