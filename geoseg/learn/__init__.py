"""Learning tools: make training data, train a model, measure it.

- :mod:`geoseg.learn.synth`: synthetic labelled aerial scenes (``geoseg synth``).
- :mod:`geoseg.learn.chips`: training chips cut from scenes and their label polygons.
- :mod:`geoseg.learn.train`: train the Mask R-CNN backend into a checkpoint (``geoseg train``).
- :mod:`geoseg.learn.evaluate`: AP, F1 and boundary IoU of predicted polygons against labels
  (``geoseg eval``).
- :mod:`geoseg.learn.select`: the tiles most worth labelling, as chips with pre-labels
  (``geoseg select``), from :mod:`geoseg.learn.uncertainty` and :mod:`geoseg.learn.coreset`.

Nothing here is imported by ``geoseg run``; ``train`` imports torch.
"""
