"""Chapter 6, pre-training: objectives, the numerics of a training step, data feeding, checkpoints, the trainer.

Survey sections 2.3 (pre-training tasks) and 2.4 (model training). Modules: `objectives` (next-token
prediction, masked language modelling, T5 span corruption, prefix LM), `numerics` (log-softmax,
cross-entropy, AdamW, the cosine schedule, gradient clipping), `data` (`get_batch` over a memmapped
token file), `checkpoint` (atomic save, safe load, bit-exact resume), `trainer` (the loop and
`llm-course pretrain`) and `assets` (the recipes that build the course's shipped models, loaded by
`reference.load_pretrained`).
"""
