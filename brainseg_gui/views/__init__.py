"""The views: the three slice views and their area (histogram, window/level, the review column), the 3-D surface view."""
