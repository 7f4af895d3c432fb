"""MediaPipe face-mesh landmarks: the detector (`detector`), detection over a whole capture with the choice
of the consistent face (`capture`), and the calibration of the landmark embedding against the detector
(`calibration`, the maths; rendering the calibration subjects is pipelines.synthetic.calibration)."""
