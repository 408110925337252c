"""Training-time augmentation: the ``--augment`` grammar (spec.py), the seeded torchvision pipeline
(pipeline.py), augmented views of an image set for the feature cache (views.py), MixUp and CutMix
(mixing.py), and feature-space augmentation of cached features (frofa.py).

Every random draw is a function of the run's seed and where the image is (epoch, batch, the
image's index in the training split), never of a stream that advances as training goes: the
plain loop, the feature cache's views and a resumed run draw exactly the same pixels.
"""
