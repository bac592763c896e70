"""Processing provider and algorithms of MAGC for QGIS."""
