"""Chapter 16: serving a language model: a paged key/value cache, continuous batching, an HTTP API.

Survey sections 3.4 (PagedAttention), 3.5 (inference frameworks) and 4 (utilization).
- `blocks`: the KV cache as a pool of fixed-size blocks, block tables, reference counts,
  copy-on-write and prefix sharing (Kwon et al., 2023, "Efficient Memory Management for Large
  Language Model Serving with PagedAttention", section 4);
- `paged_attention`: attention that reads keys and values through a block table;
- `scheduler`: iteration-level (continuous) batching with preemption (Yu et al., 2022, "Orca",
  section 3; Kwon et al., 2023, section 4.5);
- `beam`: one step of beam search over a request's beams (their blocks shared, copied on write);
- `lora`: many LoRA adapters in one batch over a shared base (S-LoRA, Punica);
- `engine`: `LLMEngine`, the loop that ties them to a `TransformerLM`;
- `server`: an OpenAI-compatible HTTP server (FastAPI) in front of the engine.
"""
