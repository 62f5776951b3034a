"""The study: its params, the context a measuring process builds, the measuring steps that run in
worker processes, the protocol the notebooks and the CLI call, and the papermill runner."""
