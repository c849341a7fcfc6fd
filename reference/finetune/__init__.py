"""Chapter 11: fine-tuning. Supervised instruction tuning (`instructions`, `sft`) and the
parameter-efficient methods: LoRA (`lora`), QLoRA over NF4 or GGUF Q4_1 weights (`quant`), and the
accounting that compares them (`accounting`); `results` is the command that measures them on
SmolLM2-135M-Instruct.
"""
