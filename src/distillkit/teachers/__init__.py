"""Teachers: building them, the fine-tune stage and its cache, the teacher-output cache, Meta-KD, offline logits and logit export."""
