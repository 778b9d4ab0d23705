"""Input and output: images, masks, video frames, COLMAP and PLY files, atomic output directories."""
