"""Helpers for the continued pre-training notebook series.

One module per concern; importing this package imports no heavy library:

- :mod:`helpers.profiles` - the run's settings as named profiles, and how one is chosen
- :mod:`helpers.session` - the first cell of every notebook (profile check, seeds, versions)
- :mod:`helpers.paths` - ``outputs/`` and the artifacts notebooks pass to each other
- :mod:`helpers.storage` - atomic writes (JSON, model folders), folder sizes, leftovers of killed saves
- :mod:`helpers.provenance` - manifests: artifacts checked to belong to the current run, saved as a unit
- :mod:`helpers.integrity` - file hashes; is a safetensors / torch.save / JSON file whole?
- :mod:`helpers.validation` - settings that cannot train, refused before anything runs
- :mod:`helpers.modeling` - loading the model (embedded GGUF, hub, unsloth or transformers)
- :mod:`helpers.data` - raw text: loading, EOS, tokenizing, packing
- :mod:`helpers.streaming` - streaming generation printed wrapped
- :mod:`helpers.training` - LoRA, the embedding learning rate, the trainer
- :mod:`helpers.checkpoints` - checkpointed, resumable training; atomic adapter saves
- :mod:`helpers.distributed` - several processes: batch split, rank sync check, run comparison
- :mod:`helpers.throughput` - tokens/s over steady optimizer steps, MFU
- :mod:`helpers.varlen_attention` - torch 2.11's varlen_attn behind unsloth's packed attention (GQA wrapper)
- :mod:`helpers.errors` - clear errors: model unavailable (hub), out of memory, disk full
- :mod:`helpers.evaluation` - held-out perplexity
- :mod:`helpers.memory` - memory probes and the stage recorder
- :mod:`helpers.forgetting` - out-of-domain perplexity (what CPT costs elsewhere)
- :mod:`helpers.merging` - merging the adapter into the base weights; what an adapter file holds
- :mod:`helpers.generation` - greedy generation, in-process or in a fresh process without PEFT
- :mod:`helpers.batching_speed` - training speed of padded rows vs packed blocks, measured
- :mod:`helpers.patch_probe` - probes what importing unsloth replaces in transformers (GPU)
- :mod:`helpers.lora_memory` - LoRA vs full fine-tuning memory as sequences grow (GPU)
"""

__version__ = "0.1.0"
