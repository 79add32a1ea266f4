"""BrainSeg's bundled resources (installed as the package `brainseg_resources`; see setup.cfg)."""
