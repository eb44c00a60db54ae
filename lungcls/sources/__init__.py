"""Where data comes from besides real inboxes: the DICOM CT writer shared by the
synthetic phantom batches (`synth`) and imported image sets (`images`), and the demo."""
