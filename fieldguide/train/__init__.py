"""Training stage: timm models, the fit loop, hyperparameter tuning and data-parallel training."""
