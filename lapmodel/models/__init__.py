"""Networks and models: Unsup3D-re, LAP, the photo-geometric core, losses, perceptual nets."""
