"""The panels beside the views: tools (brush, classes, overlay), segmentation, fine-tuning."""
