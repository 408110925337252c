"""ImageNet-C corruptions of uint8 images, for ``transferkit eval --corrupt``.

``imagenet_c.py``: the 15 corruptions' definitions (through the ``imagecorruptions-imaug`` package),
one image at a time, seeded per image; ``views.py``: an image set seen through one corruption at the
model's input size, corrupted in worker processes. This package imports nothing heavy: worker
processes load ``imagenet_c`` alone.
"""
