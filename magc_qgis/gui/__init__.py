"""Dialogs, tasks and the comparison tool of MAGC for QGIS."""
