"""The mini world: a synthetic 3D world with exact ground truth and the small trained models of ``--preset mini``.

* :mod:`.world`: procedural objects (shape classes with continuous parameters), appearance, captions.
* :mod:`.render`: the exact, anti-aliased renderer in the camera convention of :mod:`suite.cameras`.
* :mod:`.assets`: the shipped models (where they are, checks, the preset's model references).
* :mod:`.judge`: the attribute classifier that measures generated images (trained on renders only).

See ``docs/mini-world.md``.
"""
