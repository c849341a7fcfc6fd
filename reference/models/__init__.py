"""Chapter 5's model families, built from one set of parts (`reference.models.parts`).

- `TransformerLM` (`llama.py`): LLaMA-style causal decoder, and prefix decoder via `prefix_length`;
- `GPT2` (`gpt.py`): GPT-2-style causal decoder;
- `BertForMaskedLM` (`encoder.py`): BERT-style encoder with an MLM head;
- `T5` (`encoder_decoder.py`): T5-style encoder-decoder;
- `masks.py`: causal, prefix, bidirectional and cross-attention masks;
- `counting.py`: parameters, FLOPs and weight memory; `hf.py`: `to_hf` / `from_hf`.
"""

from reference.models.encoder import BertForMaskedLM
from reference.models.encoder_decoder import T5
from reference.models.gpt import GPT2
from reference.models.llama import TransformerLM

__all__ = ["GPT2", "T5", "BertForMaskedLM", "TransformerLM"]
