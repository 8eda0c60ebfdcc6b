"""Data: raw sources (hub, local files, generated) and the tokenised classification module."""

from distillkit.data.domains import snli_domains
from distillkit.data.module import TextClassificationData
from distillkit.data.snli import snli
from distillkit.data.sources import hub_dataset, local_files
from distillkit.data.synthetic import synthetic_nli

__all__ = ["TextClassificationData", "hub_dataset", "local_files", "snli", "snli_domains",
           "synthetic_nli"]
