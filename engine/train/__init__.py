"""Training: the fit loop, augmentation, synthetic subjects, fine-tuning, OASIS training and
distributed training."""
