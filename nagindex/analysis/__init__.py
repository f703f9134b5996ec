"""Interpretability: which neurons a target relies on, and why a document scored as it did.

- `deactivation`: SPEC 4 keys, zeroing them in a model, and the loss test.
- `views`: the live rows of an index and a target's features, as analysis reads them.
- `explain`: one document's score taken apart; score and layer summaries.
- `maps`: 2-D maps of NAG features.
- `plots`: PNG pictures of the above.
"""
