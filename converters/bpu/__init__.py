"""Building blocks of the Horizon RDK BPU (hb_mapper) vendor handoff bundle.

One job per module: `march` (which ops the BPU runs), `yaml_config` (the hb_mapper YAML),
`calibration` (raw float32 calibration files), `nv12` (what the board feeds the model) and
`readme` (the bundle README). Nothing is imported here, so importing the package is free.
"""
