"""Defaults of the command line, shared by its commands, in a module light enough for `--help`.

The library's functions take them as arguments (`repair.finish`'s `min_confidence` defaults to 0,
no floor), so a caller sees what it asked for."""

# A patch is background-heavy from this share of background-or-void pixels (routing, hiding).
DEFAULT_THRESHOLD = 0.5
# A background pixel becomes a class only where the model is at least this sure (repair.merge);
# void is always filled. 0.9 kept the bundled concrete model under 0.5% of intact pixels changed
# (README, "Measured").
DEFAULT_MIN_CONFIDENCE = 0.9
# Training crop, and the tile `complete` repairs in: images smaller than it train too, filled out
# with their mirror image (README, "Training"); a larger crop is refused beyond every image.
DEFAULT_CROP = 224
