"""General (task-agnostic) distillation: a randomly initialised student learns the teacher's
intermediate representations on unlabelled text before task distillation.

TinyBERT (Jiao et al., 2020, "TinyBERT: Distilling BERT for Natural Language Understanding")
and MiniLM (Wang et al., 2020, "MiniLM: Deep Self-Attention Distillation for Task-Agnostic
Compression of Pre-Trained Transformers") both start task distillation from a student that was
first distilled on plain text. The ``general`` stage of the run graph does this once per
teacher, student, corpus and settings, caches the student's encoder under
``<cache>/general/<key>/`` and reuses it in every later run and sweep job.

* :mod:`.settings`: the ``general`` config section (typed).
* :mod:`.corpus`: the unlabelled text (SNLI's sentences by default, files, a hub dataset) and
  its length-grouped batches.
* :mod:`.embeddings`: the student's embeddings initialised from the teacher's (PCA).
* :mod:`.distill`: the cached training itself.
"""

from distillkit.general.distill import GeneralResult, general_distillation
from distillkit.general.settings import GeneralSettings

__all__ = ["GeneralResult", "GeneralSettings", "general_distillation"]
