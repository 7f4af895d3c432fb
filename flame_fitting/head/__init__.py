"""Head models in FLAME's folder layout: reading and validating FLAME files safely (`flame_spec`,
`flame_pickle`, `flame_assets`, `flame_io`), the differentiable model (`head_model`), the MediaPipe landmark
embedding (`landmarks_embed`), geoface's stand-in head (`standin`), and preview pictures (`preview`)."""
