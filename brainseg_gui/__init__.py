"""BrainSeg's Qt user interface. Turns engine objects into widgets; all MXNet work goes to the
engine thread (brainseg_gui.engine_thread)."""
