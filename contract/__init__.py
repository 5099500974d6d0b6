"""The model contract: what training writes and serving reads, imported by both, importing neither.

- `card`: `ModelCard`, the one typed model card (`model_card.json`), with its schema version.
- `layout`: version folders (`<root>/<version>/`), "a folder or its parent", store tags.
- `signatures`: a SavedModel's signatures, read from `saved_model.pb` without loading it.
- `runtime`: the two ways an exported model runs (TensorFlow, a pool of LiteRT interpreters).
- `litert`: the LiteRT conversion and its proof, on the calibration sample of the export.
- `latents`: the seeded latents a generator's `generate_seeded` signature draws.
"""
