"""The web studio (Gradio): server, tabs, forms, views and the job store. No model code.

Imports ``train`` and ``infer`` (never the other way round); importing this package has no side
effects and does not import Gradio (the job worker, :mod:`ui.jobs`, runs without it).
"""
